"""Cache tools for the command line: compare two caches, describe one."""
