"""Results are written to temporary names and renamed; temporary files and folders are private
(0600 / 0700), so without care every result would be unreadable to anyone else. They follow the
umask instead, as a plain write would: `OUT/final/` is what gets shipped and served."""

import os
import stat

from test_train_e2e import invoke, train_args

from rlgf_cli.files import FILE_MODE, FOLDER_MODE, write_atomic


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_modes_are_the_umasks():
    assert FILE_MODE == 0o666 & ~_umask() and FOLDER_MODE == 0o777 & ~_umask()


def test_an_atomically_written_file_has_a_plain_files_mode(tmp_path):
    path = write_atomic(tmp_path / "summary.json", "{}")
    assert mode(path) == FILE_MODE


def test_a_runs_folders_and_files_have_plain_modes(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    invoke(train_args(tiny_causal_dir, tiny_reward_dir, out))
    for sub in ("final", "checkpoints"):
        for root, dirs, files in os.walk(out / sub):
            assert mode(root) == FOLDER_MODE, root
            for name in files:
                assert mode(os.path.join(root, name)) == FILE_MODE, os.path.join(root, name)
    for name in ("config.toml", "summary.json", "metrics.jsonl"):
        assert mode(out / name) == FILE_MODE, name
    assert any((out / "final").iterdir()) and any((out / "checkpoints").iterdir())
