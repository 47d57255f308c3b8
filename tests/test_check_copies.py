"""scripts/check_copies.py: the marked copies in train_scripts/ match their source; a drifted copy fails with a diff
and `--fix` rewrites it from the source."""

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def check_copies():
    spec = importlib.util.spec_from_file_location("check_copies", REPO_ROOT / "scripts" / "check_copies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SOURCE = '''\
def main(args):
    total = 0
    for step in range(args.steps):
        # <copy-source: update>
        loss = model(step)
        if args.clip:
            loss = loss.clamp(0, 1)  # keep it bounded
        total += loss
        # </copy-source>
    return total
'''

COPY = '''\
def other(args):
    # Copied from train_scripts/source.py:update with model->net
    loss = net(step)
    if args.clip:
        loss = loss.clamp(0, 1)  # keep it bounded

    total += loss   
    # End copy
    return total
'''


def write_repo(root, copy=COPY):
    (root / "train_scripts").mkdir()
    (root / "train_scripts" / "source.py").write_text(SOURCE)
    (root / "train_scripts" / "copy.py").write_text(copy)
    return root / "train_scripts" / "copy.py"


def test_the_repository_copies_match_their_source():
    """What `make check-copies` runs (a subprocess: the exit code and output of the real command line)."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "check_copies.py")], capture_output=True,
                            text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copies of" in result.stdout and "match their source" in result.stdout


def test_the_training_scripts_are_marked(check_copies, capsys):
    """The shared blocks of train_vae.py and train_ddpm.py are marked copies of train_ldm.py's."""
    for script in ("train_vae.py", "train_ddpm.py"):
        text = (REPO_ROOT / "train_scripts" / script).read_text()
        for name in ("training_flags", "accelerator", "optimizer_step", "trackers_and_resume", "checkpoint_and_stop"):
            assert f"# Copied from train_scripts/train_ldm.py:{name}" in text, (script, name)
    assert check_copies.main([]) == 0


def test_a_copy_that_matches_after_replacement_and_whitespace_passes(check_copies, tmp_path, capsys):
    """Indentation depth, blank lines and trailing spaces do not count; the `with` replacement is made first."""
    write_repo(tmp_path)
    assert check_copies.main(["--root", str(tmp_path)]) == 0
    assert "1 copies of 1 source blocks match" in capsys.readouterr().out


def test_a_drifted_copy_fails_with_a_diff_and_fix_repairs_it(check_copies, tmp_path, capsys):
    copy = write_repo(tmp_path, COPY.replace("clamp(0, 1)", "clamp(0, 2)").replace("    total += loss   \n", ""))
    assert check_copies.main(["--root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "train_scripts/copy.py:2: this copy of train_scripts/source.py:update differs from its source" in captured.out
    assert "--- train_scripts/source.py:update (the source with model->net)" in captured.out
    assert "-        loss = loss.clamp(0, 1)  # keep it bounded" in captured.out
    assert "+        loss = loss.clamp(0, 2)  # keep it bounded" in captured.out
    assert "-    total += loss" in captured.out
    assert "1 of 1 copies differ" in captured.err and "--fix" in captured.err

    assert check_copies.main(["--root", str(tmp_path), "--fix"]) == 0
    assert "rewrote the copy of train_scripts/source.py:update" in capsys.readouterr().out
    assert copy.read_text() == textwrap.dedent('''\
        def other(args):
            # Copied from train_scripts/source.py:update with model->net
            loss = net(step)
            if args.clip:
                loss = loss.clamp(0, 1)  # keep it bounded
            total += loss
            # End copy
            return total
        ''')
    assert check_copies.main(["--root", str(tmp_path)]) == 0


def test_an_indentation_change_inside_the_block_is_drift(check_copies, tmp_path, capsys):
    write_repo(tmp_path, COPY.replace("        loss = loss.clamp", "    loss = loss.clamp"))
    assert check_copies.main(["--root", str(tmp_path)]) == 1
    assert "differs from its source" in capsys.readouterr().out


@pytest.mark.parametrize("copy, message", [
    (COPY.replace("source.py:update", "source.py:updates"), "has no block '# <copy-source: updates>'"),
    (COPY.replace("source.py:update", "missing.py:update"), "the source file train_scripts/missing.py does not exist"),
    (COPY.replace("with model->net", "with modl->net"), "the replacement modl->net does not occur in the source"),
    (COPY.replace("    # End copy\n", ""), "the copy block 'update' is never closed"),
    (COPY.replace("# End copy", "# end copy"), "looks like a copy marker but is not one"),
    (COPY.replace("    # End copy\n", "    # Copied from train_scripts/source.py:update\n    # End copy\n"),
     "a block opens inside the copy block 'update'"),
])
def test_bad_markers_are_errors(check_copies, tmp_path, capsys, copy, message):
    write_repo(tmp_path, copy)
    assert check_copies.main(["--root", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
