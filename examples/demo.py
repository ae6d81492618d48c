"""Fill-in-the-middle demo: `make demo` asks the shipped model for line 7, the empty one."""

import os


def list_python_files(root):

    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames):
            if name.endswith(".py"):
                result.append(os.path.join(dirpath, name))
    return result
