"""What several test files need: running a command line in this process, and checking that an
error is the one line that says what to do."""
import contextlib
import io


def run_main(main, *argv):
    """``main(argv)`` of a command-line module in this process: (exit code, stdout, stderr).
    argparse errors exit through SystemExit; its code is returned like any other."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, stderr, *fragments, exit_code=None):
    """A failed command (``exit_code`` when given, else any non-zero) that printed one line
    "error: ..." holding every fragment, and no traceback.  Returns that line."""
    assert code != 0 if exit_code is None else code == exit_code, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_one_line_message(error: Exception, *fragments):
    """An exception whose message is one line holding every fragment."""
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
