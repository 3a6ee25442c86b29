"""Execute the book's chapters many times, optionally on a loaded CPU, and count the hangs.

Each execution runs in a fresh *builder* process that executes one chapter exactly as
``jupyter-book build`` does:

- ``--engine myst-nb`` (default): the builder reads ``notebooks/NN.md`` with myst-nb's own reader
  (``myst_nb.core.read.create_nb_reader``), turns ``_config.yml``'s ``execute:`` section into
  myst-nb's configuration with jupyter-book's own mapping (``jupyter_book.config.get_final_config``),
  and executes through ``myst_nb.core.execute.create_client``: the call myst-nb's Sphinx parser
  makes, which goes on to ``jupyter_cache``'s ``single_nb_execution`` and ``nbclient.execute``.
  Everything below Sphinx is the build's own code, so one run costs the chapter's time and nothing
  more;
- ``--engine jupyter-book``: the builder runs ``jupyter-book build`` itself on a one-chapter table
  of contents (Sphinx adds its start-up and the page writing; use it to confirm the short path).

A stall detector watches every execution. The builder reports each cell's start and every IOPub
message of the cell (wrapping ``NotebookClient.async_execute_cell`` and ``process_message``; the
protocol is untouched). An execution is a *hang* when

- no message came for ``--stall`` seconds, or
- for ``--idle`` seconds no message came while the kernel (with its children) and the builder used
  almost no CPU time (< ``--idle-cpu`` s): nobody is computing, both wait for each other, the
  "lost reply" symptom.

A hang is recorded with its chapter and cell; the builder's and the kernel's stacks are dumped
(py-spy, if installed beside this Python or on PATH, and faulthandler in the builder, which also
reports which of its ZMQ sockets have a message waiting); then both are killed and the run goes
on. ``--load K`` starts K busy-loop processes for the whole run. Results go to ``--out`` (JSON,
rewritten after every execution) and a summary is printed. Usage::

    python benchmarks/stress_execution.py --runs 3                    # all chapters, 3 times each
    python benchmarks/stress_execution.py --runs 20 --load 2 --chapters 03 05 07 --out r.json
    python benchmarks/stress_execution.py --runs 1 --engine jupyter-book

Two smaller experiments isolate the cause found with it (README.md, "The lost-reply hang")::

    python benchmarks/stress_execution.py --widget-cells 300 --load 2  # the live sliders' pattern
    python benchmarks/stress_execution.py --demo-lost-wakeup           # the mechanism, two sockets
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK = (
    "ipykernel",
    "ipython",
    "jupyter_client",
    "jupyter_core",
    "pyzmq",
    "tornado",
    "nbclient",
    "nbformat",
    "jupyter-cache",
    "myst-nb",
    "jupyter-book",
    "sphinx",
    "traitlets",
    "nest-asyncio",
    "psutil",
    "torch",
)


# ---------------------------------------------------------------------------------------------
# The builder process: executes one chapter and reports progress on a pipe.
# ---------------------------------------------------------------------------------------------


class _Reporter:
    def __init__(self, fd: int):
        self._out = os.fdopen(fd, "w", buffering=1)
        self.client = None
        self.loop = None

    def emit(self, **event) -> None:
        event["t"] = time.time()
        try:
            self._out.write(json.dumps(event) + "\n")
        except (BrokenPipeError, ValueError):
            pass


def _install_hooks(reporter: _Reporter) -> None:
    """Report cell starts and IOPub messages; dump stacks and socket states on SIGUSR1."""
    import faulthandler

    import nbclient.client as nc

    execute_cell = nc.NotebookClient.async_execute_cell
    process_message = nc.NotebookClient.process_message
    start_kernel = nc.NotebookClient.async_start_new_kernel_client

    async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
        import asyncio

        reporter.client = self
        reporter.loop = asyncio.get_running_loop()
        code = cell.cell_type == "code"
        reporter.emit(ev="cell", index=cell_index, code=code, source=cell.source[:300])
        try:
            return await execute_cell(self, cell, cell_index, *args, **kwargs)
        finally:
            reporter.emit(ev="cell_done", index=cell_index)

    def on_message(self, msg, cell, cell_index):
        reporter.emit(ev="msg", index=cell_index, type=msg["msg_type"])
        return process_message(self, msg, cell, cell_index)

    async def async_start_new_kernel_client(self, *args, **kwargs):
        kc = await start_kernel(self, *args, **kwargs)
        reporter.client = self
        pid = None
        with contextlib.suppress(Exception):
            pid = self.km.provisioner.process.pid
        reporter.emit(ev="kernel", pid=pid)
        return kc

    # Sends on the shell channel while a cell runs (nbclient's Output-widget mimic sends comm_msg
    # there): is the socket's ZMQ_FD readable (a command, e.g. an arrived reply, not yet
    # processed) just before and just after? select() on the FD does not consume anything.
    import select

    from jupyter_client.channels import ZMQSocketChannel

    channel_send = ZMQSocketChannel.send

    def send(self, msg):
        kc = getattr(reporter.client, "kc", None)
        shell = kc is not None and self is getattr(kc, "_shell_channel", None)
        if not shell:
            return channel_send(self, msg)
        fd = self.socket.FD
        before = bool(select.select([fd], [], [], 0)[0])
        result = channel_send(self, msg)
        after = bool(select.select([fd], [], [], 0)[0])
        reporter.emit(
            ev="shell_send", type=msg["header"]["msg_type"], fd_before=before, fd_after=after
        )
        return result

    ZMQSocketChannel.send = send
    nc.NotebookClient.async_execute_cell = async_execute_cell
    nc.NotebookClient.process_message = on_message
    nc.NotebookClient.async_start_new_kernel_client = async_start_new_kernel_client

    def diagnose(signum, frame):
        import asyncio
        import io

        import zmq

        state = {}
        kc = getattr(reporter.client, "kc", None)
        loop = getattr(reporter, "loop", None)
        for name in ("shell", "iopub", "stdin", "control"):
            channel = getattr(kc, f"_{name}_channel", None) if kc is not None else None
            sock = getattr(channel, "socket", None)
            if sock is None or sock.closed:
                continue
            # What pyzmq's asyncio socket is waiting for, before EVENTS is read (reading it
            # processes the socket's pending commands).
            futures = [
                {"kind": e.kind, "done": e.future.done()}
                for e in list(getattr(sock, "_recv_futures", []))
            ]
            info = {
                "recv_futures": futures,
                "io_state": getattr(sock, "_state", None),
                "bound_to_running_loop": getattr(sock, "_current_loop", None) is loop,
            }
            if loop is not None:
                with contextlib.suppress(Exception):
                    info["fd_watched_by_loop"] = sock.FD in loop._selector.get_map()
            info["fd_readable"] = bool(select.select([sock.FD], [], [], 0)[0])
            events = sock.get(zmq.EVENTS)
            info["pollin"] = bool(events & zmq.POLLIN)
            state[name] = info
        tasks = []
        if loop is not None:
            for task in asyncio.all_tasks(loop):
                buf = io.StringIO()
                task.print_stack(file=buf)
                tasks.append(buf.getvalue()[-3000:])
        reporter.emit(ev="diag", sockets=state, tasks=tasks)
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
            f.seek(0)
            reporter.emit(ev="faulthandler", text=f.read())

    signal.signal(signal.SIGUSR1, diagnose)


class _Logger:
    """The subset of myst-nb's logger that the execution clients call."""

    def __init__(self, reporter: _Reporter):
        self.reporter = reporter

    def _log(self, level: str, msg, *args, **kwargs) -> None:
        self.reporter.emit(ev="log", level=level, msg=str(msg)[:2000])

    def info(self, msg, *args, **kwargs):
        self._log("info", msg)

    def warning(self, msg, *args, **kwargs):
        self._log("warning", msg)

    def error(self, msg, *args, **kwargs):
        self._log("error", msg)

    def debug(self, msg, *args, **kwargs):
        pass


def _book_config(cell_timeout: int | None) -> dict:
    import yaml

    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "force"
    if cell_timeout is not None:
        config["execute"]["timeout"] = cell_timeout
    # The config is written elsewhere: local extensions' folders relative to the repository.
    extensions = config.get("sphinx", {}).get("local_extensions") or {}
    extensions.update({name: str(REPO / folder) for name, folder in extensions.items()})
    return config


def _build_myst_nb(chapter: Path, cell_timeout: int | None, reporter: _Reporter) -> None:
    from jupyter_book.config import get_final_config
    from myst_nb.core.config import NbParserConfig
    from myst_nb.core.execute import create_client
    from myst_nb.core.read import create_nb_reader
    from myst_parser.config.main import MdParserConfig

    sphinx_config, _ = get_final_config(
        user_yaml=_book_config(cell_timeout),
        cli_config={"latex_individualpages": False},
        sourcedir=REPO,
        use_external_toc=False,
    )
    nb_fields = {f.name for f in NbParserConfig.get_fields()}
    nb_config = NbParserConfig(
        **{k[3:]: v for k, v in sphinx_config.items() if k.startswith("nb_") and k[3:] in nb_fields}
    )
    md_config = MdParserConfig()
    text = chapter.read_text()
    nb_reader = create_nb_reader(str(chapter), md_config, nb_config, text)
    notebook = nb_reader.read(text)
    reporter.emit(ev="config", timeout=nb_config.execution_timeout, mode=nb_config.execution_mode)
    with create_client(notebook, str(chapter), nb_config, _Logger(reporter), nb_reader.read_fmt):
        pass


def _build_jupyter_book(chapter: Path, cell_timeout: int | None, reporter: _Reporter) -> int:
    import yaml
    from jupyter_book.cli.main import main as jb_main

    work = Path(tempfile.mkdtemp(prefix="stress-jb-"))
    try:
        config = _book_config(cell_timeout)
        (work / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True))
        root = chapter.relative_to(REPO).with_suffix("").as_posix()
        (work / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-article", "root": root}))
        args = ["build", str(REPO), "--config", str(work / "_config.yml")]
        args += ["--toc", str(work / "_toc.yml"), "--path-output", str(work), "--all", "-q"]
        try:
            jb_main(args, standalone_mode=False)
        except SystemExit as e:
            return int(e.code or 0)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _builder(args: argparse.Namespace) -> int:
    reporter = _Reporter(args.progress_fd)
    _install_hooks(reporter)
    reporter.emit(ev="start", pid=os.getpid())
    chapter = Path(args.builder_chapter)
    try:
        if args.engine == "myst-nb":
            _build_myst_nb(chapter, args.cell_timeout, reporter)
            code = 0
        else:
            code = _build_jupyter_book(chapter, args.cell_timeout, reporter)
    except Exception as e:  # the parent records the failure; the traceback goes to stderr
        import traceback

        reporter.emit(ev="error", text="".join(traceback.format_exception(e))[-4000:])
        return 1
    reporter.emit(ev="done", code=code)
    return code


# ---------------------------------------------------------------------------------------------
# The harness: load processes, one builder per execution, the stall detector.
# ---------------------------------------------------------------------------------------------


def _versions() -> dict:
    out = {}
    for name in STACK:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    with contextlib.suppress(Exception):
        import zmq

        out["libzmq"] = zmq.zmq_version()
    out["python"] = platform.python_version()
    return out


def _chapters(selected: list[str] | None) -> list[Path]:
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    chapters = [REPO / f"{f}.md" for f in files if f.startswith("notebooks/")]
    if not selected:
        return chapters
    picked = [c for c in chapters if any(c.stem.startswith(s) for s in selected)]
    if not picked:
        names = ", ".join(c.stem for c in chapters)
        raise SystemExit(f"--chapters {' '.join(selected)} matches none of: {names}")
    return picked


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _cpu_seconds(procs) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(Exception):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _kernel_and_children(builder) -> list:
    import psutil

    with contextlib.suppress(psutil.Error):
        return builder.children(recursive=True)
    return []


def _kill(procs) -> None:
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()


def _start_load(k: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(k)
    ]


def _run_one(chapter: Path, args: argparse.Namespace, env: dict) -> dict:
    import selectors

    import psutil

    r, w = os.pipe()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--builder-chapter", str(chapter)]
    cmd += ["--progress-fd", str(w), "--engine", args.engine]
    if args.cell_timeout is not None:
        cmd += ["--cell-timeout", str(args.cell_timeout)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd, pass_fds=(w,), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    os.close(w)
    builder = psutil.Process(proc.pid)
    reader = os.fdopen(r, "r")
    sel = selectors.DefaultSelector()
    sel.register(reader, selectors.EVENT_READ)

    start = time.monotonic()
    last_event = start
    cell = None  # the cell being executed: {"index", "source", "t0"}
    cells: list[dict] = []
    events: list[dict] = []
    kernel_pid = None
    # CPU samples (monotonic time, cpu seconds of kernel+children+builder) for the idle detector.
    samples: list[tuple[float, float]] = []
    result: dict = {"chapter": chapter.stem, "status": None}
    done = False
    buf = ""
    while not done:
        ready = sel.select(timeout=1.0)
        now = time.monotonic()
        if ready:
            chunk = os.read(r, 65536).decode(errors="replace")
            if not chunk:
                done = True
            buf += chunk
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                with contextlib.suppress(json.JSONDecodeError):
                    ev = json.loads(line)
                    events.append(ev)
                    events[:] = events[-40:]
                    last_event = now
                    kind = ev.get("ev")
                    if kind == "kernel":
                        kernel_pid = ev.get("pid")
                    elif kind == "cell":
                        cell = {"index": ev["index"], "source": ev["source"], "t0": now}
                        samples.clear()
                    elif kind == "cell_done" and cell is not None:
                        cells.append({"index": cell["index"], "s": round(now - cell["t0"], 3)})
                        cell = None
                    elif kind == "error":
                        result["error"] = ev["text"]
                    elif kind == "log" and ev.get("level") in ("warning", "error"):
                        result.setdefault("log", []).append(ev["msg"])
        if proc.poll() is not None and not ready:
            done = True
        if done:
            break
        procs = [builder, *_kernel_and_children(builder)]
        samples.append((now, _cpu_seconds(procs)))
        silent = now - last_event
        reason = None
        if silent > args.stall:
            reason = f"no output for {silent:.0f} s"
        elif cell is not None and silent > args.idle:
            window = [s for s in samples if s[0] >= now - args.idle]
            if window and window[0][0] <= now - args.idle + 2:
                used = samples[-1][1] - window[0][1]
                if used < args.idle_cpu:
                    reason = (
                        f"no output for {silent:.0f} s and only {used:.2f} CPU-s used by the "
                        f"kernel and the builder in the last {args.idle:.0f} s"
                    )
        if reason is not None:
            result.update(_diagnose_and_kill(proc, builder, kernel_pid, r, sel, args))
            result["status"] = "hang"
            result["reason"] = reason
            result["cell"] = None if cell is None else {k: cell[k] for k in ("index", "source")}
            result["last_events"] = [
                {k: v for k, v in e.items() if k != "text"} for e in events[-12:]
            ]
            break
    sel.close()
    reader.close()
    if result["status"] is None:
        code = proc.wait()
        result["status"] = "ok" if code == 0 and "error" not in result else "error"
        result["returncode"] = code
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if result["status"] != "ok":
        log.seek(0)
        result["builder_output_tail"] = log.read().decode(errors="replace")[-3000:]
    log.close()
    result["wall_s"] = round(time.monotonic() - start, 2)
    result["cells"] = cells
    return result


def _diagnose_and_kill(proc, builder, kernel_pid, r, sel, args) -> dict:
    """Stacks of the builder and the kernel, the builder's socket states; then kill them."""
    import psutil

    out: dict = {}
    procs = _kernel_and_children(builder)
    kernel = None
    if kernel_pid:
        with contextlib.suppress(psutil.Error):
            kernel = psutil.Process(kernel_pid)
    if kernel is None:
        kernel = next((p for p in procs if "ipykernel" in " ".join(p.cmdline())), None)
    spy = _py_spy()
    if spy:
        targets = [("builder", proc.pid)] + ([("kernel", kernel.pid)] if kernel else [])
        for name, pid in targets:
            dump = subprocess.run(
                [spy, "dump", "--pid", str(pid), "--locals"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            out[f"py_spy_{name}"] = (dump.stdout + dump.stderr)[-12000:]
    if kernel is not None:
        with contextlib.suppress(psutil.Error):
            out["kernel_threads"] = [
                {"id": t.id, "user": t.user_time, "system": t.system_time} for t in kernel.threads()
            ]
            out["kernel_status"] = kernel.status()
    # The builder's own view: faulthandler stacks and which ZMQ sockets hold an unread message.
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        buf = ""
        while time.monotonic() < deadline and "faulthandler" not in buf:
            if sel.select(timeout=0.5):
                chunk = os.read(r, 1 << 20).decode(errors="replace")
                if not chunk:
                    break
                buf += chunk
        for line in buf.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                ev = json.loads(line)
                if ev.get("ev") == "diag":
                    out["builder_sockets"] = ev["sockets"]
                    out["builder_tasks"] = ev.get("tasks")
                elif ev.get("ev") == "faulthandler":
                    out["builder_faulthandler"] = ev["text"][-8000:]
    _kill([*procs, *([kernel] if kernel else [])])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return out


def _summary(results: list[dict], args, versions: dict, wall: float, load: int) -> dict:
    per: dict = {}
    for res in results:
        s = per.setdefault(res["chapter"], {"executions": 0, "hangs": 0, "errors": 0, "wall_s": []})
        s["executions"] += 1
        s["hangs"] += res["status"] == "hang"
        s["errors"] += res["status"] == "error"
        s["wall_s"].append(res["wall_s"])
    for s in per.values():
        w = sorted(s["wall_s"])
        s["min_s"], s["median_s"], s["max_s"] = w[0], w[len(w) // 2], w[-1]
        s["slowest_cell_s"] = 0.0
    for res in results:
        if res["cells"]:
            slowest = max(c["s"] for c in res["cells"])
            s = per[res["chapter"]]
            s["slowest_cell_s"] = max(s["slowest_cell_s"], slowest)
    return {
        "engine": args.engine,
        "load_processes": load,
        "cpu_count": os.cpu_count(),
        "stall_s": args.stall,
        "idle_s": args.idle,
        "stack": versions,
        "executions": len(results),
        "hangs": sum(r["status"] == "hang" for r in results),
        "errors": sum(r["status"] == "error" for r in results),
        "wall_s": round(wall, 1),
        "per_chapter": per,
        "hang_details": [r for r in results if r["status"] == "hang"],
        "error_details": [r for r in results if r["status"] == "error"],
        "executions_log": [{k: r.get(k) for k in ("chapter", "status", "wall_s")} for r in results],
    }


# ---------------------------------------------------------------------------------------------
# The cause, in isolation.
# ---------------------------------------------------------------------------------------------


def demo_lost_wakeup() -> int:
    """The mechanism on two bare sockets: a reply waits in a zmq.asyncio DEALER that an asyncio
    task polls (as nbclient polls the shell channel for execute_reply); then the client sends on
    the same socket, as nbclient's Output-widget mimic sends comm_msg. Through zmq.asyncio's own
    send the poll wakes; through jupyter_client's Session.send (8.x: a blocking shadow socket) the
    send consumes the socket's edge-triggered ZMQ_FD signal and the poll never wakes."""
    import asyncio

    import zmq
    import zmq.asyncio
    from jupyter_client.session import Session

    async def once(via: str) -> bool:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        session = Session(key=b"")
        kernel = zmq.Socket.shadow(router.underlying)  # the kernel's side, blocking
        session.send(dealer, "execute_request", {})
        ident = kernel.recv_multipart()[0]
        waiting = asyncio.ensure_future(dealer.poll())  # what shell_channel.get_msg() awaits
        await asyncio.sleep(0.05)
        kernel.send_multipart([ident, b"execute_reply"])
        time.sleep(0.05)  # the reply now waits in the client's socket
        if via == "Session.send":
            session.send(dealer, "comm_msg", {})
        elif via == "zmq.asyncio":
            await dealer.send_multipart([b"comm_msg"])
        try:
            await asyncio.wait_for(waiting, 2)
            woke = True
        except asyncio.TimeoutError:
            woke = False
        waiting_in_socket = bool(dealer.get(zmq.EVENTS) & zmq.POLLIN)
        dealer.close(0)
        router.close(0)
        ctx.term()
        print(
            f"  then a send via {via:13s}: the poll woke: {woke}; the reply still waits in the "
            f"socket: {waiting_in_socket and not woke}"
        )
        return woke

    print(f"jupyter_client {metadata.version('jupyter_client')}, pyzmq {metadata.version('pyzmq')}")
    woke = {via: asyncio.run(once(via)) for via in ("(no send)", "zmq.asyncio", "Session.send")}
    return 0 if all(woke.values()) else 1


WIDGET_CELL = """import ipywidgets as widgets
from IPython.display import display
out = widgets.Output()
with out:
    out.clear_output(wait=True)
    display("x" * 100)
widgets.VBox([widgets.FloatSlider(), out])"""


def widget_cells(n: int, load: int, timeout: int) -> int:
    """n copies of the live sliders' pattern (an Output widget that captures a display) in one
    kernel, through nbclient with a short per-cell timeout: a lost execute_reply shows as a cell
    that waited for the timeout (whose final poll then finds the reply)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(WIDGET_CELL) for _ in range(n)]
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3")
    seconds: list[float] = []
    execute_cell = client.async_execute_cell

    async def timed(cell, index, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return await execute_cell(cell, index, *args, **kwargs)
        finally:
            seconds.append(time.monotonic() - t0)

    client.async_execute_cell = timed
    busy = _start_load(load)
    t0 = time.monotonic()
    try:
        client.execute()
    finally:
        for q in busy:
            q.kill()
            q.wait()
    lost = sum(s > timeout - 0.5 for s in seconds)
    print(
        json.dumps(
            {
                "jupyter_client": metadata.version("jupyter_client"),
                "cells": len(seconds),
                "lost_replies": lost,
                "cell_timeout_s": timeout,
                "load_processes": load,
                "wall_s": round(time.monotonic() - t0, 1),
            }
        )
    )
    return 1 if lost else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--chapters", nargs="*", help="chapter stems or prefixes (default: all 7)")
    p.add_argument("--runs", type=int, default=1, help="executions of each chapter (default 1)")
    p.add_argument("--load", type=int, default=0, help="busy-loop processes to run meanwhile")
    p.add_argument("--stall", type=float, default=240.0, help="seconds without output = hang")
    p.add_argument("--idle", type=float, default=30.0, help="seconds silent and idle = hang")
    p.add_argument("--idle-cpu", type=float, default=0.3, help="CPU-s under which 'idle'")
    p.add_argument("--engine", choices=("myst-nb", "jupyter-book"), default="myst-nb")
    p.add_argument(
        "--cell-timeout", type=int, help="override _config.yml's execute.timeout (seconds)"
    )
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    p.add_argument(
        "--demo-lost-wakeup", action="store_true", help="show the cause on two bare sockets"
    )
    p.add_argument(
        "--widget-cells",
        type=int,
        metavar="N",
        help="instead of chapters: N Output-widget cells in one kernel, 5 s cell timeout",
    )
    p.add_argument("--builder-chapter", help=argparse.SUPPRESS)
    p.add_argument("--progress-fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.builder_chapter:
        return _builder(args)
    if args.demo_lost_wakeup:
        return demo_lost_wakeup()
    if args.widget_cells is not None:
        if args.widget_cells < 1:
            p.error(f"--widget-cells must be at least 1, got {args.widget_cells}")
        return widget_cells(args.widget_cells, args.load, args.cell_timeout or 5)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    if args.load < 0:
        p.error(f"--load must be 0 or more, got {args.load}")
    if args.idle <= 0 or args.stall <= 0:
        p.error("--idle and --stall must be positive")

    chapters = _chapters(args.chapters)
    env = dict(os.environ)
    data = REPO.parent / "shared" / "data"
    if "DIFFUSION_LESSONS_DATA" not in env and data.is_dir():
        env["DIFFUSION_LESSONS_DATA"] = str(data)
    versions = _versions()
    print("stack:", " ".join(f"{k}={v}" for k, v in versions.items()), flush=True)
    print(
        f"{len(chapters)} chapters x {args.runs} runs, engine {args.engine}, load {args.load}, "
        f"py-spy {'yes' if _py_spy() else 'no'}",
        flush=True,
    )
    load = _start_load(args.load)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    results: list[dict] = []
    t0 = time.monotonic()
    try:
        for run in range(args.runs):
            for chapter in chapters:
                res = _run_one(chapter, args, env)
                res["run"] = run
                results.append(res)
                hangs = sum(r["status"] == "hang" for r in results)
                extra = ""
                if res["status"] == "hang":
                    cell = res.get("cell") or {}
                    extra = f"  HANG in cell {cell.get('index')}: {res['reason']}"
                elif res["status"] == "error":
                    extra = "  ERROR: " + (res.get("error") or res.get("builder_output_tail", ""))[
                        -300:
                    ].replace("\n", " | ")
                print(
                    f"[{len(results):4d}] {chapter.stem:22s} run {run}: {res['status']:5s} "
                    f"{res['wall_s']:7.1f} s  (hangs so far {hangs}){extra}",
                    flush=True,
                )
                if args.out:
                    summary = _summary(results, args, versions, time.monotonic() - t0, args.load)
                    args.out.write_text(json.dumps(summary, indent=1))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        for q in load:
            q.kill()
            q.wait()
    summary = _summary(results, args, versions, time.monotonic() - t0, args.load)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("engine", "load_processes", "executions", "hangs", "errors", "wall_s")
            }
        )
    )
    for name, s in summary["per_chapter"].items():
        print(
            f"  {name:22s} {s['executions']:3d} runs, {s['hangs']} hangs, {s['errors']} errors, "
            f"wall min/median/max {s['min_s']:.1f}/{s['median_s']:.1f}/{s['max_s']:.1f} s, "
            f"slowest cell {s['slowest_cell_s']:.1f} s"
        )
    return 1 if summary["hangs"] or summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
