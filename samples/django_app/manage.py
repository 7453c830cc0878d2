#!/usr/bin/env python3
"""A Django site that shows who is online in a NoLag room: an HTML page and a JSON endpoint.

nolag broker --tokens tests/fixtures/tokens.json &
NOLAG_TOKEN=dev-token-backend python samples/django_app/manage.py runserver
python samples/django_app/manage.py nolag_presence list     # or: watch
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "presence_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
