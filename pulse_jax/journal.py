"""The run journal: an SQLite database in the output folder, the record that resume and skip decisions read.

One row per input (its report entry, whether it is pending or done, which run holds it), one per run (its
report header, its failures). Each batch is one transaction, so the work per finished input is constant
however many inputs the folder holds, and a kill at any point leaves the last committed state. report.json
and index.html are written from it (reports.py). Users may query it with any SQLite client.

Concurrency: runs on one host share a folder's journal (WAL mode; a writer waits for another's
transaction). A run claims an input by recording it pending under its own owner (host and pid) before
searching it; another live run's claim is respected. Runs on other hosts (``--shard``, several processes of
a job) each keep a journal file of their own: SQLite's locking is unreliable on network filesystems, so no
database is shared across hosts. A journal that is damaged, of a newer format, or not ours is refused with
a message and never deleted or replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pulse_jax.errors import DiskFull, PulseJaxError

FORMAT = "pulse-jax-journal"
VERSION = 1
JOURNAL_NAME = "journal.sqlite"
JOURNAL_GLOB = "journal*.sqlite"
BUSY_TIMEOUT_MS = 120_000  # another run's transaction on this folder: wait for it, not fail
OWNER = f"{socket.gethostname()}:{os.getpid()}"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    input TEXT PRIMARY KEY,
    run_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    owner TEXT NOT NULL,
    entry TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    started REAL NOT NULL,
    header TEXT NOT NULL,
    ended REAL,
    stopped INTEGER NOT NULL DEFAULT 0,
    searched TEXT NOT NULL DEFAULT '[]',
    skipped TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE failures (run INTEGER NOT NULL, input TEXT NOT NULL, error TEXT NOT NULL);
"""


def journal_name(shard: tuple[int, int] | None = None, process: tuple[int, int] | None = None) -> str:
    """``journal.sqlite``, or one file per shard and per process of a job (never shared across hosts)."""
    parts = []
    if shard is not None:
        parts.append(f"shard-{shard[0]}-of-{shard[1]}")
    if process is not None and process[1] > 1:
        parts.append(f"process-{process[0]}-of-{process[1]}")
    return ".".join(["journal", *parts, "sqlite"])


def _sqlite_error(path: Path, e: sqlite3.Error, doing: str) -> PulseJaxError:
    text = str(e)
    if "disk is full" in text or "SQLITE_FULL" in text:
        return DiskFull(f"cannot {doing} the run journal {path}: the disk is full: free space and run the same "
                        "command again (what finished is kept)")
    if "readonly" in text or "unable to open" in text:
        return PulseJaxError(f"cannot {doing} the run journal {path}: {text} (no permission, or a read-only "
                             "folder?): choose another --out")
    return PulseJaxError(f"the run journal {path} is damaged or not a pulse-jax journal ({type(e).__name__}: {text}); "
                         "it was left as it is: move it away (the outputs beside it stay valid) and run again")


def _check(conn: sqlite3.Connection, path: Path) -> None:
    """Ours and of a format this pulse-jax reads, or a clear refusal (nothing is changed)."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise PulseJaxError(f"{path} is an SQLite database but not a pulse-jax run journal (no meta table); it "
                                "was left as it is: move it away or choose another --out")
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as e:
        raise _sqlite_error(path, e, "read") from None
    if meta.get("format") != FORMAT:
        raise PulseJaxError(f"{path} is an SQLite database but not a pulse-jax run journal (format "
                            f"{meta.get('format')!r}); it was left as it is: move it away or choose another --out")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        version = None
    if version is None or version > VERSION:
        raise PulseJaxError(f"{path} was written by a newer pulse-jax (journal format {meta.get('version')!r}; this "
                            f"one reads {VERSION}): upgrade pulse-jax, or choose another --out")
    missing = {"entries", "runs", "failures"} - tables
    if missing:
        raise PulseJaxError(f"the run journal {path} is damaged (no {', '.join(sorted(missing))} table); it was left "
                            "as it is: move it away and run again")


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}?mode=rwc"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _alive(owner: str) -> bool:
    """Whether the run that wrote ``owner`` (host:pid) still runs; another host's counts as gone (a journal is
    only ever shared on one host)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _loads(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Journal:
    """This process's journal file in an output folder (created on first use)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        exists = self.path.exists()
        try:
            self.conn = _connect(self.path)
            if exists:
                _check(self.conn, self.path)
            else:
                with self.transaction():
                    if not {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}:
                        for statement in filter(str.strip, SCHEMA.split(";")):
                            self.conn.execute(statement)
                        self.conn.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)",
                                          (FORMAT, str(VERSION)))
                _check(self.conn, self.path)
            self.conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "open") from None
        self.run_id: int | None = None

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change (BEGIN IMMEDIATE: another run waits for it, not the other way round mid-way)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "write") from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:  # SQLite may have rolled back already (a full disk does)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise _sqlite_error(self.path, e, "write") from None
            raise

    # ---- a run --------------------------------------------------------------------------------------------

    def start_run(self, header: dict) -> None:
        with self.transaction() as c:
            cur = c.execute("INSERT INTO runs (owner, started, header) VALUES (?, ?, ?)",
                            (OWNER, time.time(), json.dumps(header, allow_nan=False)))
            self.run_id = cur.lastrowid

    def end_run(self, *, stopped: bool, searched: list[str], skipped: list[str], header: dict | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET ended = ?, stopped = ?, searched = ?, skipped = ?"
                      + (", header = ?" if header is not None else "") + " WHERE id = ?",
                      (time.time(), int(stopped), json.dumps(searched), json.dumps(skipped),
                       *([json.dumps(header, allow_nan=False)] if header is not None else []), self.run_id))

    def fail(self, failures: Iterable[dict]) -> None:
        rows = [(self.run_id, str(f["input"]), str(f["error"])) for f in failures]
        if rows:
            with self.transaction() as c:
                c.executemany("INSERT INTO failures VALUES (?, ?, ?)", rows)

    # ---- inputs -------------------------------------------------------------------------------------------

    def claim(self, entries: dict[str, dict], run_key: str, seen: dict[str, dict] | None = None) -> list[str]:
        """Record these inputs pending under this run, in one transaction; -> the names left alone, not
        claimed: another live run holds them, or another run changed them since this one read ``seen`` (the
        entries its plan was made from: an input another run finished meanwhile is not searched again)."""
        taken = []
        now = time.time()
        seen = seen or {}
        with self.transaction() as c:
            for name, entry in entries.items():
                row = c.execute("SELECT state, owner, updated FROM entries WHERE input = ?", (name,)).fetchone()
                if row is not None and row[1] != OWNER:
                    live_claim = row[0] == "pending" and _alive(row[1])
                    changed = row[2] != seen.get(name, {}).get("_updated")
                    if live_claim or changed:
                        taken.append(name)
                        continue
                c.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, 'pending', ?, ?, ?)",
                          (name, run_key, OWNER, json.dumps(entry, allow_nan=False), now))
        return taken

    def record(self, done: dict[str, dict | None], previous: dict[str, dict] | None = None) -> None:
        """Finished inputs (their entries), in one transaction. None for an input means: drop this run's claim
        (back to what ``previous`` held, or no entry)."""
        now = time.time()
        previous = previous or {}
        with self.transaction() as c:
            for name, entry in done.items():
                if entry is not None:
                    c.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, 'done', ?, ?, ?)",
                              (name, entry.get("run_key", ""), OWNER, json.dumps(entry, allow_nan=False), now))
                elif name in previous:
                    old = previous[name]
                    c.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                              (name, old.get("run_key", ""), "pending" if old.get("pending") else "done",
                               old.get("_owner", OWNER), json.dumps(old, allow_nan=False), now))
                else:
                    c.execute("DELETE FROM entries WHERE input = ? AND owner = ?", (name, OWNER))

    def adopt(self, entries: dict[str, dict]) -> None:
        """Entries an earlier version kept in report.json, recorded as they were (pending or done), once."""
        now = time.time()
        with self.transaction() as c:
            for name, e in entries.items():
                c.execute("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                          (name, str(e.get("run_key", "")), "pending" if e.get("pending") else "done",
                           "earlier version:0", json.dumps(e, allow_nan=False), now))

    def entries(self) -> dict[str, dict]:
        try:
            rows = self.conn.execute("SELECT input, state, owner, entry, updated FROM entries").fetchall()
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "read") from None
        return {name: _with_state(entry, state, owner, updated) for name, state, owner, entry, updated in rows}

    def latest_run(self) -> dict | None:
        return _latest_run(self.conn, self.path)


def _with_state(text: str, state: str, owner: str, updated: float) -> dict:
    entry = _loads(text, "entry")
    entry["pending"] = True if state == "pending" else entry.get("pending", False)
    if state == "done":
        entry.pop("pending", None)
    entry["_owner"], entry["_updated"] = owner, updated
    return entry


def _latest_run(conn: sqlite3.Connection, path: Path) -> dict | None:
    try:
        row = conn.execute("SELECT id, header, started, ended, stopped, searched, skipped FROM runs "
                           "ORDER BY started DESC, id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        failures = conn.execute("SELECT input, error FROM failures WHERE run = ?", (row[0],)).fetchall()
    except sqlite3.Error as e:
        raise _sqlite_error(path, e, "read") from None
    run = {"header": _loads(row[1], "header"), "started": row[2], "ended": row[3], "stopped": bool(row[4]),
           "searched": json.loads(row[5] or "[]"), "skipped": json.loads(row[6] or "[]"),
           "failed": [{"input": i, "error": e} for i, e in failures]}
    return run


def journal_paths(out_dir: Path) -> list[Path]:
    return sorted(p for p in Path(out_dir).glob(JOURNAL_GLOB) if p.is_file())


def read_journals(out_dir: Path, skip: Path | None = None) -> tuple[dict[str, dict], list[dict]]:
    """Every journal in the folder (but ``skip``), read only: (entries by input, the newest one wins; each
    journal's latest run)."""
    entries: dict[str, dict] = {}
    runs = []
    for path in journal_paths(out_dir):
        if skip is not None and path.resolve() == Path(skip).resolve():
            continue
        try:
            conn = _connect(path, read_only=True)
        except sqlite3.Error as e:
            raise _sqlite_error(path, e, "read") from None
        try:
            _check(conn, path)
            rows = conn.execute("SELECT input, state, owner, entry, updated FROM entries").fetchall()
            run = _latest_run(conn, path)
        except sqlite3.Error as e:
            raise _sqlite_error(path, e, "read") from None
        finally:
            conn.close()
        for name, state, owner, entry, updated in rows:
            if name not in entries or updated > entries[name]["_updated"]:
                entries[name] = _with_state(entry, state, owner, updated)
        if run is not None:
            runs.append(run)
    return entries, runs
