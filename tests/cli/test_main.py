"""The command line's one error boundary: one line, the right exit code, whatever failed."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_RICH = (
    "import sys; sys.modules['rich'] = None; "  # as if the cli extra were not installed
    "from paranorm.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_a_command_without_the_cli_extra_says_how_to_install_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_RICH, "demo", "--steps", "2", "--no-plot"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "paranorm demo: error: this command needs the rich package, which paranorm's 'cli' "
        "extra installs: pip install 'paranorm[cli]'"
    )
    assert list(tmp_path.iterdir()) == []
