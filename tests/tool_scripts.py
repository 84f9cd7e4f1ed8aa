"""Loading a script of tools/ as a module, to call its `main(argv)` in the test's process."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    """`tools/<name>.py` as a fresh module (its `if __name__ == "__main__"` part not run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
