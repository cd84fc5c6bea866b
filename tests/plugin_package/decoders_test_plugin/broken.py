"""A plugin that fails to import."""

raise ImportError("this test plugin is broken on purpose")
