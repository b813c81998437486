#!/usr/bin/env python3
"""Drives runm-agent in a real microVM through its vsock protocol (no runm CLI).

Started by agent/tests/smoke.sh inside the test host: boots `runm boot --no-agent` with
the agent's initramfs and a busybox disk, then exercises every request on a busybox
container and prints one `ok:`/`FAIL:` line per check. Exit status 0 when all passed.
"""
import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

AGENT_PORT = 1024
failures = []


def check(name, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + name + ("" if cond else f" ({detail})"), flush=True)
    if not cond:
        failures.append(name)


class Conn:
    def __init__(self, uds, deadline=60):
        end = time.time() + deadline
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(uds)
                s.sendall(b"CONNECT %d\n" % AGENT_PORT)
                line = b""
                while not line.endswith(b"\n"):
                    c = s.recv(1)
                    if not c:
                        break
                    line += c
                if line.startswith(b"OK"):
                    self.s = s
                    return
                s.close()
            except OSError:
                pass
            if time.time() > end:
                raise RuntimeError("cannot connect to the agent")
            time.sleep(0.1)

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise RuntimeError("agent closed the connection")
            buf += c
        return buf

    def call(self, req):
        body = json.dumps(req).encode()
        self.s.sendall(struct.pack(">I", len(body)) + body)
        (n,) = struct.unpack(">I", self.recv_exact(4))
        return json.loads(self.recv_exact(n))


class Stream:
    """An attached stdio stream: collects what the process writes."""

    all = []

    def __init__(self, uds, process, kind):
        Stream.all.append(self)
        self.name = f"{process['container']}/{process['exec']}/{kind}"
        self.conn = Conn(uds)
        r = self.conn.call({"type": "attach_stream", "process": process, "stream": kind})
        assert r == {"type": "ok"}, r
        self.data = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                b = self.conn.s.recv(65536)
            except OSError:
                return
            if not b:
                return
            self.data += b

    def send(self, data, close=False):
        self.conn.s.sendall(data)
        if close:
            self.conn.s.shutdown(socket.SHUT_WR)

    def text(self, timeout=10):
        self.thread.join(timeout)
        return self.data.decode(errors="replace")


def key(container, exec_id=None):
    return {"container": container, "exec": exec_id}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runm", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--disk", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    # Not in --dir: a Unix socket cannot be bound on the test host's 9p share.
    uds = os.path.join(tempfile.mkdtemp(prefix="runm-smoke-"), "v.sock")
    log = open(os.path.join(a.dir, "console.log"), "wb")
    vm = subprocess.Popen(
        [a.runm, "boot", "--no-agent", "--timeout", "150", "--memory", "256",
         "--cmdline", "runm.debug", "--initrd", a.initrd, "--disk", a.disk, "--vsock-socket", uds],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        while not os.path.exists(uds):
            if vm.poll() is not None:
                raise RuntimeError("the VM exited early")
            time.sleep(0.05)
        run(uds, json.load(open(a.config)))
    except Exception as e:  # noqa: BLE001 - report, then power off below
        check("scenario ran to the end", False, repr(e))
        for s in Stream.all:
            print(f"stream {s.name}: {s.data!r}")
    finally:
        try:
            Conn(uds, 10).call({"type": "shutdown"})
        except Exception as e:  # noqa: BLE001
            print("shutdown:", e)
        try:
            vm.wait(60)
        except subprocess.TimeoutExpired:
            vm.kill()
        log.close()
        print("--- guest console ---")
        print(open(os.path.join(a.dir, "console.log"), errors="replace").read())
    print(f"{'FAILED' if failures else 'PASSED'}: {len(failures)} failed")
    return 1 if failures else 0


def run(uds, base_config):
    ctl = Conn(uds)
    r = ctl.call({"type": "ping"})
    check("ping", r.get("type") == "pong" and r.get("protocol_version") == 2, r)

    # Errors name what failed.
    r = ctl.call({"type": "create_container", "id": "bad", "spec": base_config,
                  "rootfs": {"type": "block", "device": "/dev/sda", "fstype": "ext4", "readonly": True}})
    check("bad device refused", r.get("type") == "error" and "/dev/sda" in r.get("message", ""), r)
    r = ctl.call({"type": "create_container", "id": "bad", "spec": base_config,
                  "rootfs": {"type": "block", "device": "/dev/vdz", "fstype": "ext4", "readonly": True}})
    check("mount failure named", r.get("type") == "error" and "cannot mount /dev/vdz" in r.get("message", ""), r)
    r = ctl.call({"type": "wait", "process": key("nope")})
    check("unknown container", r == {"type": "error", "message": "container nope not found"}, r)

    # The container: its init reads a line from stdin, echoes it, then sleeps.
    config = json.loads(json.dumps(base_config))
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c",
                                 "echo ready; echo to-stderr >&2; read x; echo stdin:$x; exec sleep 1000"]
    init = key("c1")
    out = Stream(uds, init, "stdout")
    err = Stream(uds, init, "stderr")
    inp = Stream(uds, init, "stdin")
    r = ctl.call({"type": "create_container", "id": "c1", "spec": config,
                  "rootfs": {"type": "block", "device": "/dev/vda", "fstype": "ext4", "readonly": True}})
    check("create", r.get("type") == "created" and r.get("pid", 0) > 1, r)
    r = ctl.call({"type": "create_container", "id": "c1", "spec": config,
                  "rootfs": {"type": "block", "device": "/dev/vda", "fstype": "ext4", "readonly": True}})
    check("duplicate id refused", r.get("type") == "error" and "already exists" in r.get("message", ""), r)
    r = ctl.call({"type": "start_container", "id": "c1"})
    check("start", r == {"type": "ok"}, r)
    inp.send(b"hello\n", close=True)
    end = time.time() + 20
    while "stdin:hello" not in out.data.decode(errors="replace") and time.time() < end:
        time.sleep(0.1)
    check("init stdout and stdin", out.data == b"ready\nstdin:hello\n", out.data)
    check("init stderr", err.data == b"to-stderr\n", err.data)

    # Exec with pipes and an exit code.
    e1 = key("c1", "e1")
    o1 = Stream(uds, e1, "stdout")
    s1 = Stream(uds, e1, "stderr")
    r = ctl.call({"type": "exec", "process": e1, "spec": {
        "args": ["sh", "-c", "echo out; echo err >&2; cat /proc/self/cgroup; exit 7"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}})
    check("exec", r.get("type") == "created", r)
    r = ctl.call({"type": "wait", "process": e1})
    check("exec wait status", r == {"type": "exited", "status": 7}, r)
    # Wait answers only once the output is drained: it is all here already.
    check("exec stdout complete at wait", o1.data.startswith(b"out\n0::/"), o1.data)
    check("exec stderr complete at wait", s1.data == b"err\n", s1.data)
    r = ctl.call({"type": "wait", "process": e1})
    check("second wait answers at once", r == {"type": "exited", "status": 7}, r)

    # A big output arrives whole.
    e2 = key("c1", "e2")
    o2 = Stream(uds, e2, "stdout")
    r = ctl.call({"type": "exec", "process": e2, "spec": {
        "args": ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}})
    r = ctl.call({"type": "wait", "process": e2})
    lines = o2.data.decode().splitlines()
    check("big output complete at wait", r == {"type": "exited", "status": 0} and len(lines) == 2000
          and lines[-1].startswith("line-1999-"), (r, len(lines)))

    # Another user, numerically.
    e3 = key("c1", "e3")
    o3 = Stream(uds, e3, "stdout")
    r = ctl.call({"type": "exec", "process": e3, "spec": {
        "args": ["id"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 1000, "gid": 1000}}})
    r = ctl.call({"type": "wait", "process": e3})
    check("exec as uid 1000", r.get("status") == 0 and o3.data.startswith(b"uid=1000 gid=1000"), (r, o3.data))

    # A missing executable.
    r = ctl.call({"type": "exec", "process": key("c1", "e4"), "spec": {
        "args": ["/bin/nonexistent"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}})
    check("missing executable named", r.get("type") == "error" and "not found" in r.get("message", ""), r)

    # A terminal, resized.
    e5 = key("c1", "e5")
    tty = Stream(uds, e5, "tty")
    r = ctl.call({"type": "exec", "process": e5, "spec": {
        "args": ["sh", "-c", "read x; tty; stty size; echo got:$x"], "terminal": True,
        "cwd": "/", "env": ["PATH=/bin", "TERM=xterm"], "user": {"uid": 0, "gid": 0}}})
    check("exec with terminal", r.get("type") == "created", r)
    r = ctl.call({"type": "resize_tty", "process": e5, "rows": 30, "cols": 100})
    check("resize tty", r == {"type": "ok"}, r)
    tty.send(b"typed\n")
    r = ctl.call({"type": "wait", "process": e5})
    t = tty.data.decode(errors="replace")
    check("terminal output", r.get("status") == 0 and "/dev/pts/" in t and "30 100" in t and "got:typed" in t,
          (r, t))

    # ps, stats, pause/resume.
    r = ctl.call({"type": "processes", "id": "c1"})
    cmds = [p["cmd"] for p in r.get("processes", [])]
    check("processes", "sleep 1000" in cmds, r)
    r = ctl.call({"type": "stats", "id": "c1"})
    check("stats", r.get("type") == "stats" and r.get("pids_current", 0) >= 1
          and r.get("memory_usage_bytes", 0) > 0 and r.get("cpu_usage_ns", 0) > 0, r)
    r = ctl.call({"type": "pause", "id": "c1"})
    check("pause", r == {"type": "ok"}, r)
    r = ctl.call({"type": "resume", "id": "c1"})
    check("resume", r == {"type": "ok"}, r)

    # Kill the init: every process of the container goes, Wait says 128+9.
    r = ctl.call({"type": "signal", "process": init, "signal": 9, "all": False})
    check("signal", r == {"type": "ok"}, r)
    r = ctl.call({"type": "wait", "process": init})
    check("init wait after SIGKILL", r == {"type": "exited", "status": 137}, r)
    r = ctl.call({"type": "signal", "process": init, "signal": 9, "all": False})
    check("signal after exit refused", r.get("type") == "error", r)


if __name__ == "__main__":
    sys.exit(main())
