"""Where a figure may be written, and writing it: the format the file name asks for, atomically.

A plot path must name an image format matplotlib writes (its suffix: .png, .pdf, .svg, .jpg,
...); anything else is refused rather than filled with PNG bytes. The file is written to a
temporary beside it and renamed (:mod:`paranorm._files`). An existing plot is replaced; a
folder, a non-regular file or a read-only file is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ._errors import ParanormError
from ._extras import require
from ._files import atomic_write

__all__ = ["FORMATS", "figure_format", "save_figure"]

#: The formats offered in messages (matplotlib's Agg canvas writes a few more, e.g. tiff, webp).
FORMATS = ("png", "pdf", "svg", "jpg")


def figure_format(path: str | os.PathLike[str], what: str = "plot") -> str:
    """The format ``path``'s suffix names, after checking the figure can be written there."""
    require("matplotlib", f"writing a {what}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path).expanduser()
    if target.is_dir():
        raise ParanormError(
            f"cannot write the {what} to {str(target)!r}: it is a folder. Pass a file path in it, "
            f"e.g. {str(target / ('paranorm-' + what.split()[0] + '.png'))!r}."
        )
    suffix = target.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if suffix not in supported:
        named = f"suffix {target.suffix!r}" if suffix else "no suffix"
        raise ParanormError(
            f"cannot write the {what} to {str(target)!r}: {named} is not an image format. Name "
            f"the file with one of .{', .'.join(FORMATS)} (or another format matplotlib writes: "
            f"{', '.join(sorted(set(supported) - set(FORMATS)))})."
        )
    if not target.parent.is_dir():
        raise ParanormError(
            f"cannot write the {what} to {str(target)!r}: folder {str(target.parent)!r} does "
            "not exist. Create it first or pick another path."
        )
    if os.path.lexists(target):
        mode = os.stat(target).st_mode if target.exists() else 0
        if not stat.S_ISREG(mode):
            raise ParanormError(
                f"cannot write the {what} to {str(target)!r}: it is not a regular file "
                "(a folder, a link to nowhere or a device). Pick a file path."
            )
        if not mode & 0o222 or not os.access(target, os.W_OK):  # mode bits: root's access too
            raise ParanormError(
                f"cannot write the {what} to {str(target)!r}: the file is read-only. Make it "
                "writable (chmod u+w) or pick another path."
            )
    return "jpeg" if suffix == "jpg" else suffix


def save_figure(figure: Any, path: str | os.PathLike[str], what: str = "plot", **savefig: Any) -> Path:
    """Write matplotlib ``figure`` to ``path`` in the format its suffix names; return the path."""
    fmt = figure_format(path, what)
    target = Path(path).expanduser()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if figure.canvas is None or not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    with atomic_write(os.path.realpath(target)) as handle:
        figure.savefig(handle, format=fmt, **savefig)
    return target
