"""The CLI's exit statuses, shared by the entry point and the config checks (a leaf module)."""

USAGE_EXIT_CODE = 2  # a command line or config the user can fix
