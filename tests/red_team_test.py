"""The second red team's cases: hostile and careless inputs through the command line and the library. Each
ends in a correct result, or exit status 2 with one line naming the file or flag and what to do; every file
the user had is unchanged (sha256 before and after); nothing hangs (every command has a timeout) and no
converter grows without bound (run under a memory limit)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import stylegan2_files as files
import torch
from helpers import (
    command_env,
    convert,
    convert_here,
    pulse_jax,
    pulse_jax_here,
    run_python,
    save_checkpoint,
    start_python,
    upsample,
)
from PIL import Image
from reference import stylegan2_torch as ref2
from reference import stylegan_torch as ref

import pulse_jax as pj
from pulse_jax import model as model_module
from pulse_jax.safe_files import _HOST, TEMP_MARK

# The red team's battery: end-to-end hostile and careless cases through the CLI, most of them with a search
# or a process of their own. CI and the whole suite run it; the day-to-day tier leaves it out.
pytestmark = pytest.mark.slow

# Every converter run below is limited to this much address space: a file that makes one allocate what it
# claims (gigabytes) fails there instead of taking the machine's memory. Importing jax and torch fits.
MEMORY_LIMIT = 6 * 2**30


def digests(*folders) -> dict:
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(r, *needles):
    """Exit 2, one 'error:' line naming what it must, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def limited(*args, timeout=300):
    """A command in a process of its own under MEMORY_LIMIT of address space."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([os.sys.executable, *map(str, args)], env=command_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def png(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


# ---- data lost ----------------------------------------------------------------------------------------


def test_a_users_report_and_index_in_out_are_never_replaced(micro_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"my": "notes"}')
    (out / "index.html").write_text("<html>my album</html>")
    before = digests(out)
    r = pulse_jax_here("upsample", png(tmp_path / "in" / "a.png"), "--model", micro_model_dir, "--out", out,
                       "--steps", "1", "--quiet")
    one_line_error(r, "report.json", "was not written by pulse-jax")
    assert digests(out) == before
    (out / "report.json").unlink()
    r = pulse_jax_here("upsample", tmp_path / "in" / "a.png", "--model", micro_model_dir, "--out", out, "--steps",
                       "1", "--quiet")
    one_line_error(r, "index.html", "was not written by pulse-jax")


def test_the_demo_replaces_only_what_a_demo_wrote(micro_model_dir, tmp_path):
    run = tmp_path / "run"
    assert pulse_jax_here("upsample", png(tmp_path / "in" / "a.png"), "--model", micro_model_dir, "--out", run,
                          "--steps", "1", "--quiet").returncode == 0
    users = tmp_path / "mine"
    users.mkdir()
    for name in ("sheet.png", "input.png", "report.json"):
        (users / name).write_bytes(b"the user's own " + name.encode())
    before = digests(run, users)
    for out in (run, users):
        r = pulse_jax_here("demo", "--model", micro_model_dir, "--out", out, "--steps", "2", "--seeds", "1",
                           "--size", "8", "--quiet")
        one_line_error(r, "was not written by pulse-jax demo")
    assert digests(run, users) == before
    demo = tmp_path / "demo"
    for _ in range(2):  # an earlier demo's folder: replaced, as the user asks for it again
        r = pulse_jax_here("demo", "--model", micro_model_dir, "--out", demo, "--steps", "2", "--seeds", "1",
                           "--size", "8", "--quiet")
        assert r.returncode == 0, r.stderr


def test_align_never_replaces_a_face_or_photo_it_did_not_write(micro_model_dir, tmp_path):
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    out = tmp_path / "faces"
    out.mkdir()
    (out / "astronaut_0.png").write_bytes(b"a face the user kept")
    before = digests(tmp_path)
    r = pulse_jax_here("align", photos, "--out", out, "--size", "32")
    assert r.returncode == 1 and "astronaut_0.png exists and holds something else" in r.stderr, r.stderr
    assert digests(tmp_path) == before
    # --out is the photo folder: refused before any face is written
    r = pulse_jax_here("align", photos, "--out", photos, "--size", "32")
    one_line_error(r, "--out")
    assert digests(tmp_path) == before
    # two photos of one name in two folders: the second's faces would take the first's names
    other = tmp_path / "more"
    other.mkdir()
    Image.fromarray(data.astronaut()[:, ::-1]).save(other / "astronaut.png")
    r = pulse_jax_here("align", photos / "astronaut.png", other / "astronaut.png", "--out", tmp_path / "new")
    assert r.returncode == 1 and "would have the names of" in r.stderr, r.stderr
    assert pulse_jax_here("align", photos / "astronaut.png", "--out", tmp_path / "first").returncode == 0
    by_name = lambda folder: {Path(k).name: v for k, v in digests(folder).items()}  # noqa: E731
    assert by_name(tmp_path / "new") == by_name(tmp_path / "first")  # the first photo's faces only
    # upsample --align: a file of the user's in out/aligned stays as it is
    (tmp_path / "up" / "aligned").mkdir(parents=True)
    (tmp_path / "up" / "aligned" / "astronaut_0.png").write_bytes(b"mine")
    r = pulse_jax_here("upsample", photos, "--align", "--model", micro_model_dir, "--out", tmp_path / "up",
                       "--steps", "1", "--quiet")
    assert (tmp_path / "up" / "aligned" / "astronaut_0.png").read_bytes() == b"mine"
    assert "holds something else" in r.stderr + r.stdout + (tmp_path / "up" / "report.json").read_text()


def test_convert_overwrite_keeps_a_users_file_inside_params(tmp_path):
    sd = ref.random_synthesis_state_dict(32, 256, 32, seed=0)
    synthesis = save_checkpoint(sd, tmp_path / "s.pt", "zip")
    out = tmp_path / "m"
    assert convert_here("--synthesis", synthesis, "--out", out, "--quiet").returncode == 0
    (out / "params" / "notes.txt").write_text("mine")
    before = digests(out)
    r = convert_here("--synthesis", synthesis, "--out", out, "--overwrite", "--quiet")
    one_line_error(r, "params/notes.txt", "not part of the model")
    assert digests(out) == before


def test_a_conversion_killed_between_its_renames_is_put_back_and_leftovers_removed(tmp_path, monkeypatch):
    """Where the two directories cannot be swapped in one step, a kill between moving the old model aside and
    the new one in left --out missing: the next conversion puts the old one back; staging folders of dead
    conversions go."""
    sd = ref.random_synthesis_state_dict(32, 256, 32, seed=0)
    synthesis = save_checkpoint(sd, tmp_path / "s.pt", "zip")
    out = tmp_path / "m"
    assert convert_here("--synthesis", synthesis, "--out", out, "--quiet").returncode == 0
    checksum = pj.load_model(out).checksum
    dead = 2**22 + 11
    aside = tmp_path / f".m{TEMP_MARK}{_HOST}-{dead}-old"
    os.replace(out, aside)  # as the kill left it
    stale = tmp_path / f".m{TEMP_MARK}{_HOST}-{dead}-staging"
    stale.mkdir()
    (stale / "half").write_bytes(b"x")
    monkeypatch.setattr(model_module, "exchange", lambda a, b: False)
    r = convert_here("--synthesis", synthesis, "--out", out, "--quiet")
    one_line_error(r, "already exists")  # the old model is back, and is not replaced without --overwrite
    assert pj.load_model(out).checksum == checksum and not aside.exists() and not stale.exists()
    assert convert_here("--synthesis", synthesis, "--out", out, "--overwrite", "--quiet").returncode == 0


# ---- hangs --------------------------------------------------------------------------------------------


def test_a_fifo_as_mask_or_model_json_is_refused_not_waited_on(micro_model_dir, tmp_path):
    fifo = tmp_path / "mask.png"
    os.mkfifo(fifo)
    r = pulse_jax("upsample", png(tmp_path / "in" / "a.png"), "--model", micro_model_dir, "--out", tmp_path / "o",
                  "--degradation", "bicubic+mask", "--mask", fifo, timeout=120)
    one_line_error(r, "mask.png is a FIFO")
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "model.json")
    sd = ref.random_synthesis_state_dict(32, 256, 32, seed=0)
    r = convert("--synthesis", save_checkpoint(sd, tmp_path / "s.pt", "zip"), "--out", model, "--overwrite",
                timeout=120)
    one_line_error(r, "not a pulse-jax model directory")


@pytest.mark.parametrize("process", [0, 1])
def test_a_process_whose_peer_never_starts_says_so(micro_model_dir, tmp_path, process):
    t = time.monotonic()
    r = pulse_jax("upsample", png(tmp_path / "in" / "a.png"), "--model", micro_model_dir, "--out", tmp_path / "o",
                  "--coordinator", "127.0.0.1:45881", "--num-processes", "2", "--process-id", str(process),
                  "--join-timeout", "3", timeout=120)
    one_line_error(r, "only 1 of 2 processes joined" if process == 0 else "could not reach the coordinator "
                   "127.0.0.1:45881")
    assert time.monotonic() - t < 60


# ---- memory -------------------------------------------------------------------------------------------


def forged_legacy_checkpoint(path: Path) -> Path:
    """A legacy torch.save file whose one storage declares 2**33 floats (32 GB) and holds four."""
    data = io.BytesIO()
    save_checkpoint({"blocks.4x4.const": torch.zeros(4)}, path, "legacy")
    raw = path.read_bytes()
    count = struct.pack("<q", 4)
    at = raw.rindex(count)  # the storage's element count, before its 16 bytes of data
    data.write(raw[:at] + struct.pack("<q", 2**33) + raw[at + 8:])
    path.write_bytes(data.getvalue())
    return path


def zip_bomb_checkpoint(path: Path) -> Path:
    """A zip torch.save file whose storage record is deflated: 8 GB of zeros claimed by a small file."""
    save_checkpoint({"blocks.4x4.const": torch.zeros(4)}, path, "zip")
    with zipfile.ZipFile(path) as src:
        items = [(i, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, body in items:
            if "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                info.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(info, "w", force_zip64=True) as f:
                    chunk = bytes(1 << 20)
                    for _ in range(64):  # 64 MB written here; the forged size below claims 8 GB
                        f.write(chunk)
            else:
                dst.writestr(info, body)
    return path


def stride_zero_pickle(path: Path) -> Path:
    """An NVIDIA network pickle whose weight is a 4-float storage viewed as 1e5 x 1e5 (stride 0)."""
    sd = ref2.random_generator_state_dict(8, 64, 4, seed=0)
    sd["synthesis.b4.conv1.weight"] = torch.zeros(1).as_strided((100_000, 100_000, 3, 3), (0, 0, 0, 0))
    return files.write_nvidia_pickle(path, files.nvidia_generator(sd, 8, 64, 4))


@pytest.mark.parametrize("kind", ["legacy size", "zip bomb", "stride 0 pickle"])
def test_a_small_file_that_claims_gigabytes_is_refused_before_anything_is_allocated(tmp_path, kind):
    if kind == "legacy size":
        args = ["--synthesis", forged_legacy_checkpoint(tmp_path / "synthesis.pt")]
        needle = "declares 8,589,934,592 FloatStorage elements"
    elif kind == "zip bomb":
        args = ["--synthesis", zip_bomb_checkpoint(tmp_path / "synthesis.pt")]
        needle = "compressed"
    else:
        args = ["--network", stride_zero_pickle(tmp_path / "g.pkl")]
        needle = "was refused before it was made"
    before = digests(tmp_path)
    r = limited("-m", "convert", *args, "--out", tmp_path / "m")
    one_line_error(r, needle)
    assert digests(tmp_path) == before and not (tmp_path / "m").exists()


def test_a_kernel_whose_header_claims_gigabytes_is_refused(tmp_path):
    path = tmp_path / "k.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2)))
    header["shape"] = (100_000, 100_000)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(32))
    with pytest.raises(pj.PulseJaxError, match="the header says .100000, 100000. float64 .76,294 MB.; a kernel is"):
        pj.PulseConfig(degradation=f"kernel:{path}")


# ---- tracebacks ---------------------------------------------------------------------------------------


def mutated_pickle(tmp_path, mutate) -> Path:
    sd = ref2.random_generator_state_dict(8, 64, 4, seed=0)
    g = files.nvidia_generator(sd, 8, 64, 4)
    mutate(g)
    return files.write_nvidia_pickle(tmp_path / "g.pkl", g)


@pytest.mark.parametrize(("mutation", "needle"), [
    (lambda g: g.meta["state"]["_init_kwargs"].__setitem__("c_dim", "abc"), "c_dim is 'abc'"),
    (lambda g: g.meta["state"]["_init_kwargs"].__setitem__("synthesis_kwargs", 5), "synthesis_kwargs is a int"),
    (lambda g: g.meta["state"].__setitem__("_init_kwargs", [1, 2]), "_init_kwargs is a list"),
    (lambda g: g.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b4"].meta["state"]["_modules"]
     ["conv1"].meta["state"]["_parameters"].__setitem__("weight", torch.tensor(1.0)), "conv1.weight"),
    (lambda g: g.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b4"].meta["state"]["_modules"]
     ["conv1"].meta["state"].__setitem__("conv_clamp", "high"), "conv_clamp ('high'"),
])
def test_records_of_the_wrong_type_are_named(tmp_path, mutation, needle):
    r = convert_here("--network", mutated_pickle(tmp_path, mutation), "--out", tmp_path / "m", "--quiet")
    one_line_error(r, needle)


def test_g_ema_a_list_and_deep_nesting_are_messages(tmp_path):
    path = tmp_path / "r.pt"
    torch.save({"g_ema": [torch.zeros(1)], "latent_avg": torch.zeros(512)}, path)
    one_line_error(convert_here("--network", path, "--out", tmp_path / "m"), "g_ema is a list")
    # {"G_ema": {"x": {"x": ...}}} 5,000 levels deep, written as opcodes (pickle.dumps itself would recurse)
    key = lambda k: pickle.SHORT_BINUNICODE + bytes([len(k)]) + k.encode()  # noqa: E731
    levels = 5000
    deep = (pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + key("G_ema") + (pickle.EMPTY_DICT + key("x")) * levels
            + pickle.EMPTY_DICT + pickle.SETITEM * (levels + 1) + pickle.STOP)
    (tmp_path / "deep.pkl").write_bytes(deep)
    one_line_error(convert_here("--network", tmp_path / "deep.pkl", "--out", tmp_path / "m"), "not NVIDIA's Generator")
    nested = {}
    for _ in range(levels):
        nested = {"x": nested}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(4 * levels)  # torch.save pickles recursively; reading it must not
    try:
        torch.save({"g_ema": nested, "latent_avg": torch.zeros(512)}, tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(limit)
    one_line_error(convert_here("--network", tmp_path / "deep.pt", "--out", tmp_path / "m"), "g_ema: x is a dict")


def test_a_report_json_damaged_by_hand_does_not_stop_a_rerun(micro, tmp_path):
    inputs = [png(tmp_path / "in" / f"f{i}.png", i) for i in range(2)]
    out = tmp_path / "out"
    upsample(micro, inputs, out)
    (out / "journal.sqlite").unlink()  # an earlier version's folder: report.json is all there is
    (out / "report.json").write_text('{"run_key": "k", "inputs": [{"input": "f0", "run_key": "x", "outputs": 5}, '
                                     '{"input": ["f1"]}, {"outputs": {"image": 7}}, "junk"]}')
    report = upsample(micro, inputs, out, overwrite=True)
    assert sorted(report["searched"]) == ["f0", "f1"] and not report["failed"]


def test_an_output_name_taken_by_a_link_is_named_as_the_link_and_left_alone(micro, tmp_path):
    target = tmp_path / "elsewhere" / "photo.png"
    png(target, 5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(target)
    before = digests(tmp_path / "elsewhere")
    report = upsample(micro, [png(tmp_path / "in" / "a.png")], out)
    error = report["failed"][0]["error"]
    assert f"{out / 'a.png'} exists" in error and "elsewhere" not in error, error
    assert (out / "a.png").is_symlink() and digests(tmp_path / "elsewhere") == before


def test_a_model_json_with_values_of_the_wrong_type_is_one_line(micro, tmp_path):
    import json

    out = pj.save_model(micro, tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    meta["architecture"] = ["x"]
    (out / "model.json").write_text(json.dumps(meta))
    r = pulse_jax_here("upsample", png(tmp_path / "in" / "a.png"), "--model", out, "--out", tmp_path / "o")
    one_line_error(r, "architecture")


def test_an_input_name_too_long_for_its_outputs_is_skipped_with_the_reason(micro, tmp_path):
    long = png(tmp_path / "in" / ("x" * 246 + ".png"))  # 250 bytes: fine; its _sheet.png (256) is not
    short = png(tmp_path / "in" / "a.png")
    report = upsample(micro, [long, short], tmp_path / "out")
    assert report["searched"] == ["a"] and "names would be 256 bytes long" in report["failed"][0]["error"]


def test_convert_onto_a_full_disk_is_one_line(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill ({mount.stderr.decode().strip()[:80]})")
    try:
        sd = ref.random_synthesis_state_dict(32, 256, 32, seed=0)
        checkpoint = save_checkpoint(sd, tmp_path / "s.pt", "zip")
        r = convert("--synthesis", checkpoint, "--out", disk / "m")  # refused before writing: no room
        one_line_error(r, "disk is full")
        assert len(r.stderr.splitlines()) < 5 and not [p for p in disk.iterdir()]
        # The disk fills while orbax writes (the check before passed): still one line, nothing left behind.
        r = run_python("-c", "import sys; from pulse_jax import model; model._check_room = lambda *a: None; "
                             "from convert.__main__ import main; sys.exit(main())",
                       "--synthesis", checkpoint, "--out", disk / "m", "--quiet")
        one_line_error(r, "disk is full", "nothing was replaced")
        assert len(r.stderr.splitlines()) < 3, r.stderr[:2000]
        left = subprocess.run(['find', str(disk), '-ls'], capture_output=True, text=True).stdout
        assert not [p for p in disk.iterdir()], left
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_truncated_params_file_without_a_manifest_is_one_line(micro, tmp_path):
    out = pj.save_model(micro, tmp_path / "m")
    meta = (out / "model.json").read_text()
    import json

    meta = json.loads(meta)
    del meta["files"]  # as an earlier version wrote it
    (out / "model.json").write_text(json.dumps(meta))
    biggest = max((p for p in (out / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    r = pulse_jax("upsample", png(tmp_path / "in" / "a.png"), "--model", out, "--out", tmp_path / "o")
    one_line_error(r, "could not read the parameters")
    assert "Event loop is closed" not in r.stderr and len(r.stderr.splitlines()) < 4, r.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["upsample", "x.png", "--model", "m", "--out", "o", "--steps", "1000000000000"], "steps must be a whole number"),
    (["demo", "--steps", "3000000000", "--out", "d"], "steps must be a whole number"),
    (["upsample", "x.png", "--model", "m", "--out", "o", "--coordinator", "notahost", "--num-processes", "2",
      "--process-id", "0"], "write HOST:PORT"),
    (["upsample", "x.png", "--model", "m", "--out", "o", "--eps", "inf"], "eps must be a finite number"),
    (["upsample", "x.png", "--model", "m", "--out", "o", "--degradation", "gaussian:1e-300"], "gaussian sigma"),
    (["upsample", "x.png", "--model", "m", "--out", "o", "--degradation", "noise:1"], "every image would be within"),
    (["upsample", "x.png", "--model", "m", "--out", ""], "an empty name"),
    (["demo", "--out", ""], "an empty name"),
])
def test_bad_numbers_and_names_are_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    png(tmp_path / "x.png")
    r = pulse_jax_here(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_a_million_seeds_is_refused_with_the_size(micro_model_dir, tmp_path):
    r = pulse_jax_here("upsample", png(tmp_path / "in" / "a.png"), "--model", micro_model_dir, "--out",
                       tmp_path / "o", "--seeds", "1000000000")
    one_line_error(r, "--seeds 1000000000: the search's state alone would take")


# ---- signals ------------------------------------------------------------------------------------------


def test_a_ctrl_c_while_jax_starts_stops_the_run(micro_model_dir, tmp_path):
    png(tmp_path / "in" / "a.png")
    proc = start_python("-m", "pulse_jax", "upsample", tmp_path / "in", "--model", micro_model_dir, "--out",
                        tmp_path / "o", "--steps", "2000", "--quiet")
    time.sleep(0.5)  # jax is still being imported
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "SIGINT" in err and "Traceback" not in err, (proc.returncode, err)


def test_a_second_ctrl_c_during_a_search_ends_the_process_cleanly(micro_model_dir, tmp_path):
    for i in range(2):
        png(tmp_path / "in" / f"f{i}.png", i)
    out = tmp_path / "o"
    proc = start_python("-m", "pulse_jax", "upsample", tmp_path / "in", "--model", micro_model_dir, "--out", out,
                        "--steps", "100000", "--chunk-steps", "100000", "--batch-size", "1", "--quiet")
    deadline = time.monotonic() + 120
    while not (out / "journal.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # inside the first search's long chunk
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "again: stopping now" in err and "Traceback" not in err, (proc.returncode, err)
    assert not [p for p in out.iterdir() if TEMP_MARK in p.name]


def test_ctrl_c_after_the_command_is_ignored_while_it_exits(monkeypatch):
    from pulse_jax import cli, launch

    monkeypatch.setattr(cli, "main", lambda argv, early_signals=None: 0)
    monkeypatch.setattr(launch.sys, "argv", ["pulse-jax", "report", "x"])
    saved = {s: signal.getsignal(s) for s in launch.STOPPING}
    try:
        assert launch.main() == 0
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in launch.STOPPING)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


# ---- minor --------------------------------------------------------------------------------------------


def test_kernels_that_are_not_what_they_say_are_refused(tmp_path):
    cases = {"complex.npy": (np.ones((3, 3), np.complex64), "2-D array of real numbers"),
             "huge.npy": (np.full((3, 3), 1e308), "finite with a positive sum"),
             "object.npy": (np.array([[1, 2]], dtype=object), "objects")}
    for name, (array, needle) in cases.items():
        np.save(tmp_path / name, array, allow_pickle=True)
        with pytest.raises(pj.PulseJaxError, match=needle):
            pj.PulseConfig(degradation=f"kernel:{tmp_path / name}")
    (tmp_path / "text.npy").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(pj.PulseJaxError, match="not a .npy file"):
        pj.PulseConfig(degradation=f"kernel:{tmp_path / 'text.npy'}")


def test_a_storage_that_carries_code_is_named_so(tmp_path):
    from convert import nvidia_pickle

    marker = tmp_path / "ran"

    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    stream = io.BytesIO()  # what NVIDIA's pickles hold for a storage: a legacy torch.save stream, here with code
    torch.save(Plant(), stream, _use_new_zipfile_serialization=False)
    with pytest.raises(pj.CheckpointError, match="may carry code"):
        nvidia_pickle._load_storage(stream.getvalue())
    with pytest.raises(pj.CheckpointError, match="not a torch.save file"):
        nvidia_pickle._load_storage(pickle.dumps(Plant()))
    assert not marker.exists()


def test_what_a_folder_holds_besides_images_is_said_and_odd_inputs_are_named(micro_model_dir, tmp_path):
    folder = tmp_path / "in"
    png(folder / "a.png")
    (folder / ".hidden.png").write_bytes(b"x")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    r = pulse_jax_here("upsample", folder, "--model", micro_model_dir, "--out", tmp_path / "o", "--steps", "1",
                       "--quiet")
    assert r.returncode == 0, r.stderr
    for said in ("1 hidden file(s) (.hidden.png)", "1 subfolder(s)", "entries that are not files", "gone.png",
                 "pipe.png"):
        assert said in r.stderr, (said, r.stderr)
    one_line_error(pulse_jax_here("upsample", folder / "pipe.png", "--model", micro_model_dir, "--out",
                                  tmp_path / "o2"), "pipe.png is a FIFO")
    one_line_error(pulse_jax_here("upsample", folder / "gone.png", "--model", micro_model_dir, "--out",
                                  tmp_path / "o2"), "gone.png is a link to nothing")
