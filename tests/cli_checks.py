"""What every CLI test of bad input checks: exit code 2 and one line on stderr, no traceback."""


def one_error_line(capsys, code, *needles):
    """The captured stderr is one line (blank lines aside) holding every needle, and the exit code is 2."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
