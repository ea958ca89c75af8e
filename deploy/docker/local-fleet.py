#!/usr/bin/env python3
"""Runs deploy/compose.yaml's fleet as local processes: no Docker engine needed.

    python3 deploy/docker/local-fleet.py COMPOSE_CONFIG WORK_DIR

`scripts/check-deploy.sh --fleet` calls it with the output of `docker-compose
config` (the compose file with anchors merged and variables substituted), the
outpost binary in OUTPOST_BIN and SeaweedFS's `weed` in OUTPOST_WEED.

What runs is what the compose file says, translated the way Docker would
place it, not a second copy of the commands:

- argv: the service's entrypoint (else the Dockerfile's ENTRYPOINT) plus its
  command; `outpost` and `outpost-fleet-init` resolve, through PATH, to the
  binary and to deploy/docker/fleet-init.sh, as in the image;
- environment: the Dockerfile's ENV, then the service's `environment`;
- container paths: each service's volume targets become directories under
  WORK_DIR (one per named volume, shared between the services that mount
  it, as Docker shares it), bind mounts their source, and the files the image
  ships (/usr/share/outpost/...) their source in the repo;
- network: every container has its own ports, so `0.0.0.0:P` and
  `127.0.0.1:P` in a service, and `SERVICE:P` anywhere, become a free
  loopback port per (service, P). Certificates name localhost and 127.0.0.1
  besides the service name, so mTLS checks stay real.

SeaweedFS is the pinned `weed` from PyPI with the compose command's flags; the
flags for its other ports (which Docker would give each container for free)
are appended, as tests/common/s3.rs does.

Then: init twice (idempotent: the second run changes no key or certificate),
each compose healthcheck must pass, a token minted on edge1 as deploy/README.md
says, a write on edge1 and the read of it on edge3 with that token (one JWT key
pair for the fleet), every peer link connected, every node's backup caught up,
`outpost restore` of edge1 from the bucket holding the row, the init service
giving the restored node the fleet's keys and a certificate, and SIGTERM
stopping each edge with exit 0 within the service's stop_grace_period.
Exits 1 on the first failure with the logs' tails.
"""

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

import dockerfile  # deploy/docker/dockerfile.py, beside this script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDGES = ["edge1", "edge2", "edge3"]
# Files the image ships, by their path in the image -> the repo's copy.
IMAGE_FILES = {
    "/usr/share/outpost/migrations": os.path.join(REPO, "migrations"),
    "/usr/share/outpost/outpost.toml": os.path.join(REPO, "config", "outpost.toml"),
}
READY_TIMEOUT = 90
SYNC_TIMEOUT = 30


def log(msg):
    print(f"fleet: {msg}", flush=True)


class Failure(Exception):
    pass


def dockerfile_runtime():
    """ENV and ENTRYPOINT of the Dockerfile's last stage."""
    env, entrypoint = {}, None
    for line in dockerfile.instructions():
        words = line.split(None, 1)
        if not words:
            continue
        op = words[0].upper()
        rest = words[1] if len(words) > 1 else ""
        if op == "FROM":
            env, entrypoint = {}, None
        elif op == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif op == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    if entrypoint is None:
        raise Failure("the Dockerfile's last stage has no ENTRYPOINT in exec form")
    return env, entrypoint


def bindable(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Ports:
    """A free loopback port per (service, container port). Drawn below 32768
    (Linux's ephemeral range, where outgoing connections take ports at any
    moment) and, for SeaweedFS, with port + 10000 (its gRPC port) free too."""

    def __init__(self):
        self.map = {}
        self.taken = set()

    def pick(self, grpc=False):
        for _ in range(10000):
            p = random.randint(10000, 22700)
            need = [p, p + 10000] if grpc else [p]
            if not any(q in self.taken for q in need) and all(bindable(q) for q in need):
                self.taken.update(need)
                return p
        raise Failure("no free loopback ports")

    def get(self, service, port):
        key = (service, int(port))
        if key not in self.map:
            self.map[key] = self.pick(grpc=service == "seaweedfs")
        return self.map[key]


class Fleet:
    def __init__(self, config_path, work):
        self.config = yaml.safe_load(open(config_path))
        self.services = self.config["services"]
        self.work = work
        self.ports = Ports()
        self.image_env, self.image_entrypoint = dockerfile_runtime()
        self.procs = {}
        self.logs = {}
        self.bin_dir = os.path.join(work, "bin")
        os.makedirs(self.bin_dir, exist_ok=True)
        # The image's executables, by the names the compose file uses.
        os.symlink(os.path.abspath(os.environ["OUTPOST_BIN"]), os.path.join(self.bin_dir, "outpost"))
        os.symlink(
            os.path.join(REPO, "deploy", "docker", "fleet-init.sh"),
            os.path.join(self.bin_dir, "outpost-fleet-init"),
        )

    # -- translation -------------------------------------------------------

    def mounts(self, name):
        """Container path -> local path, for one service."""
        out = dict(IMAGE_FILES)
        for volume in self.services[name].get("volumes", []):
            if isinstance(volume, str):
                parts = volume.split(":")
                source, target = parts[0], parts[1]
            else:
                source, target = volume["source"], volume["target"]
            if source.startswith("/"):
                out[target] = source
            else:
                local = os.path.join(self.work, "volumes", source)
                os.makedirs(local, exist_ok=True)
                out[target] = local
        return out

    def translate(self, name, text):
        text = str(text)
        # Longest container path first, so /data/edge1 wins over /data.
        for target, local in sorted(self.mounts(name).items(), key=lambda kv: -len(kv[0])):
            # A path, not a substring of a URL (s3://bucket/fleet) or of a longer path.
            text = re.sub(r"(?<![\w.\-/])" + re.escape(target) + r"(?=/|$|[\s:,\"'\]])", local, text)

        def addr(m):
            host, port = m.group(1), m.group(2)
            service = name if host in ("0.0.0.0", "127.0.0.1", "localhost") else host
            return f"127.0.0.1:{self.ports.get(service, port)}"

        hosts = "|".join(re.escape(s) for s in self.services) + r"|0\.0\.0\.0|127\.0\.0\.1|localhost"
        return re.sub(r"\b(" + hosts + r"):(\d+)\b", addr, text)

    def env(self, name):
        env = {
            "PATH": self.bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.path.join(self.work, "home"),
            "RUST_BACKTRACE": "0",
        }
        os.makedirs(env["HOME"], exist_ok=True)
        service = self.services[name]
        merged = {}
        if "build" in service or service.get("image", "").startswith("outpost"):
            merged.update(self.image_env)
        merged.update({k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()})
        env.update({k: self.translate(name, v) for k, v in merged.items()})
        return env

    def argv(self, name):
        """Entrypoint + command, for a service of the outpost image."""
        service = self.services[name]
        entrypoint = service.get("entrypoint") or self.image_entrypoint
        if isinstance(entrypoint, str):
            entrypoint = shlex.split(entrypoint)
        command = service.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        return [self.translate(name, a) for a in list(entrypoint) + list(command)]

    # -- processes ---------------------------------------------------------

    def run(self, name, argv, env, timeout=60):
        log(f"{name}: $ {shlex.join(argv)}")
        out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        return out

    def start(self, name, argv, env):
        path = os.path.join(self.work, f"{name}.log")
        self.logs[name] = path
        log(f"{name}: $ {shlex.join(argv)}")
        with open(path, "ab") as f:
            self.procs[name] = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, name, lines=30):
        try:
            text = open(self.logs[name], errors="replace").read().splitlines()
        except (KeyError, OSError):
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def alive(self, name):
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            raise Failure(f"{name} exited ({proc.returncode if proc else 'not started'}):\n{self.tail(name)}")

    def healthcheck(self, name, timeout=READY_TIMEOUT):
        """Runs the service's compose healthcheck until it passes."""
        test = self.services[name].get("healthcheck", {}).get("test")
        if not test or test[0] not in ("CMD", "CMD-SHELL"):
            raise Failure(f"{name} has no CMD healthcheck")
        argv = [self.translate(name, a) for a in test[1:]]
        if test[0] == "CMD-SHELL":
            argv = ["sh", "-c", " ".join(argv)]
        log(f"{name}: healthcheck $ {shlex.join(argv)}")
        deadline = time.time() + timeout
        while True:
            self.alive(name)
            if argv[0] == "wget" and shutil.which("wget") is None:
                # The images' busybox wget; this machine may have none: the
                # same GET (`wget -q -O /dev/null URL` succeeds on a 2xx).
                code, text = self.http("GET", argv[-1]) if argv[-1].startswith("http") else (0, "")
                done = subprocess.CompletedProcess(argv, 0 if 200 <= code < 300 else 1, b"", text.encode())
            else:
                done = subprocess.run(argv, env=self.env(name), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            if done.returncode == 0:
                return
            if time.time() > deadline:
                raise Failure(
                    f"{name}'s healthcheck still fails after {timeout}s: {done.stderr.decode(errors='replace')[-500:]}\n"
                    + self.tail(name)
                )
            time.sleep(0.5)

    def stop_all(self):
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    # -- HTTP --------------------------------------------------------------

    def http(self, method, url, body=None, token=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e)

    def api(self, name):
        published = self.services[name].get("ports") or []
        if not published:
            raise Failure(f"{name} publishes no API port")
        target = published[0]["target"] if isinstance(published[0], dict) else str(published[0]).split(":")[-1].split("/")[0]
        return f"http://127.0.0.1:{self.ports.get(name, target)}"

    def admin(self, name):
        return f"http://127.0.0.1:{self.ports.get(name, 9090)}"

    def status(self, name):
        code, body = self.http("GET", self.admin(name) + "/status")
        if code != 200:
            raise Failure(f"{name} /status answered {code}: {body[:300]}")
        return json.loads(body)

    def sql(self, name, token, *stmts):
        requests = [{"type": "execute", "stmt": {"sql": s}} for s in stmts] + [{"type": "close"}]
        code, body = self.http("POST", self.api(name) + "/v2/pipeline", {"requests": requests}, token)
        if code != 200:
            raise Failure(f"{name} /v2/pipeline answered {code}: {body[:300]}")
        results = json.loads(body)["results"]
        for r in results:
            if r["type"] != "ok":
                raise Failure(f"{name}: {r}")
        return results


def digest_tree(path):
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(d, f)
            if f.startswith("outpost.db"):
                continue  # the database's own bookkeeping may change; its identity is checked by the node id
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def main():
    config_path, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    fleet = Fleet(config_path, work)
    try:
        scenario(fleet)
    except (Failure, subprocess.TimeoutExpired) as e:
        print(f"fleet: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        fleet.stop_all()
    log("passed")
    return 0


def scenario(fleet):
    services = fleet.services
    for needed in ["init", "seaweedfs"] + EDGES:
        if needed not in services:
            raise Failure(f"compose has no service {needed}")

    # 1. init, twice: the second run must be a no-op. Compose runs it as root
    # to chown the volumes (--owner); a developer's run here may not be root.
    init_argv = fleet.argv("init")
    if os.geteuid() != 0 and "--owner" in init_argv:
        i = init_argv.index("--owner")
        log(f"init: not root, so without {' '.join(init_argv[i:i + 2])}")
        del init_argv[i : i + 2]
    for attempt in (1, 2):
        done = fleet.run("init", init_argv, fleet.env("init"))
        sys.stdout.write("".join(f"    {line}\n" for line in done.stdout.splitlines()))
        if done.returncode != 0:
            raise Failure(f"init run {attempt} exited {done.returncode}: {done.stderr}")
        if attempt == 1:
            before = {e: digest_tree(fleet.mounts(e)["/var/lib/outpost"]) for e in EDGES}
    after = {e: digest_tree(fleet.mounts(e)["/var/lib/outpost"]) for e in EDGES}
    if before != after:
        raise Failure("a second init run changed keys or certificates")
    pubs = {open(os.path.join(fleet.mounts(e)["/var/lib/outpost"], "keys", "jwt.pub.pem")).read() for e in EDGES}
    if len(pubs) != 1:
        raise Failure("the edges do not share one JWT public key")
    log("init: ran twice, second run changed nothing; one JWT key pair on the three nodes")

    # 2. SeaweedFS: the compose command, plus the ports Docker would isolate.
    # The image's /entrypoint.sh hands any command it has no case for (our
    # first word is -logtostderr) to /usr/bin/weed unchanged.
    command = fleet.services["seaweedfs"].get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    weed_argv = [fleet.translate("seaweedfs", a) for a in command]
    p = lambda port: fleet.ports.get("seaweedfs", port)  # noqa: E731
    sock = os.path.join(fleet.work, "weed")
    os.makedirs(sock, exist_ok=True)
    weed_argv = (
        [os.environ["OUTPOST_WEED"]]
        + weed_argv
        + [
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p(8333)}",
            f"-master.port={p(9333)}",
            f"-volume.port={p(8080)}",
            f"-filer.port={p(8888)}",
            f"-admin.port={p(23646)}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={sock}/s3.sock",
            f"-filer.localSocket={sock}/filer.sock",
        ]
    )
    fleet.start("seaweedfs", weed_argv, fleet.env("seaweedfs"))
    fleet.healthcheck("seaweedfs")
    log("seaweedfs: healthy")

    # 3. The edges.
    for e in EDGES:
        fleet.start(e, fleet.argv(e), fleet.env(e))
    for e in EDGES:
        fleet.healthcheck(e)
        log(f"{e}: healthy (api {fleet.api(e)}, admin {fleet.admin(e)})")

    # 4. A token, as deploy/README.md mints it: `docker compose exec edge1 outpost token`.
    done = fleet.run("edge1", ["outpost", "token"], fleet.env("edge1"))
    if done.returncode != 0:
        raise Failure(f"outpost token: {done.stderr}")
    token = done.stdout.strip()
    code, _ = fleet.http("POST", fleet.api("edge3") + "/v2/pipeline", {"requests": [{"type": "close"}]})
    if code != 401:
        raise Failure(f"edge3 answered {code} without a token, expected 401")

    # 5. Write on edge1, read on edge3 with the same token.
    marker = f"check-deploy {int(time.time() * 1000)}"
    write_ms = int(time.time() * 1000)
    fleet.sql(
        "edge1",
        token,
        "INSERT INTO projects(id, name) VALUES ('fleet-check', 'deploy check') ON CONFLICT(id) DO NOTHING",
        f"INSERT INTO tasks(id, project_id, title) VALUES ('fleet-check-task', 'fleet-check', '{marker}')",
    )
    log(f"edge1: wrote task 'fleet-check-task' = {marker!r}")
    deadline = time.time() + SYNC_TIMEOUT
    while True:
        rows = fleet.sql("edge3", token, "SELECT title FROM tasks WHERE id = 'fleet-check-task'")[0]["response"]["result"]["rows"]
        if rows and rows[0][0].get("value") == marker:
            log(f"edge3: read it back ({time.time() * 1000 - write_ms:.0f} ms after the write)")
            break
        if time.time() > deadline:
            raise Failure(f"edge3 does not have the row after {SYNC_TIMEOUT}s:\n{fleet.tail('edge3')}")
        time.sleep(0.2)

    # 6. Every link connected, every backup caught up past the write.
    deadline = time.time() + SYNC_TIMEOUT
    while True:
        problems = []
        for e in EDGES:
            st = fleet.status(e)
            peers = st.get("peers") or []
            connected = [x for x in peers if x.get("state") == "connected"]
            if len(connected) < len(EDGES) - 1:
                problems.append(f"{e}: peers {[(x.get('url') or x.get('node_id'), x.get('state'), x.get('last_error')) for x in peers]}")
            b = st.get("backup") or {}
            if not b:
                problems.append(f"{e}: no backup in /status")
            elif b.get("unshipped_entries") != 0 or b.get("caught_up_ms", 0) < write_ms or b.get("last_error"):
                problems.append(f"{e}: backup {b}")
        if not problems:
            break
        if time.time() > deadline:
            raise Failure("after %ds: %s" % (SYNC_TIMEOUT, "; ".join(problems)))
        time.sleep(0.5)
    for e in EDGES:
        b = fleet.status(e)["backup"]
        log(f"{e}: 2 peers connected; backup {b['url']} caught up, 0 unshipped")
    done_argv = [fleet.translate("edge3", a) for a in ["outpost", "status", "--admin", "http://127.0.0.1:9090"]]
    done = fleet.run("edge3", done_argv, fleet.env("edge3"))
    if done.returncode != 0:
        raise Failure(f"outpost status: {done.stderr}")
    sys.stdout.write("".join(f"    {line}\n" for line in done.stdout.splitlines()))

    # 7. The backup restores: edge1 from the bucket, with edge1's S3 settings.
    node_id = fleet.status("edge1")["node_id"]
    env = fleet.env("edge1")
    restored = os.path.join(fleet.work, "restored")
    done = fleet.run(
        "edge1",
        ["outpost", "restore", "--from", env["OUTPOST_BACKUP_URL"], "--node", node_id, "--data-dir", restored],
        env,
        timeout=120,
    )
    if done.returncode != 0:
        raise Failure(f"outpost restore: {done.stdout}\n{done.stderr}")
    db = sqlite3.connect(os.path.join(restored, "outpost.db"))
    row = db.execute("SELECT title FROM tasks WHERE id = 'fleet-check-task'").fetchone()
    db.close()
    if not row or row[0] != marker:
        raise Failure(f"the restored edge1 lacks the row (got {row})")
    log(f"restore: edge1 ({node_id}) rebuilt from {env['OUTPOST_BACKUP_URL']} holds the row")

    # 7b. deploy/README.md's rebuild: the init service, given the restored
    # data dir as a node, gives it the fleet's keys and a certificate.
    done = fleet.run("init", init_argv + [f"edge4={restored}"], fleet.env("init"))
    if done.returncode != 0:
        raise Failure(f"init on the restored node exited {done.returncode}: {done.stdout}\n{done.stderr}")
    if not os.path.exists(os.path.join(restored, "tls", "node.pem")):
        raise Failure("init gave the restored node no certificate")
    if open(os.path.join(restored, "keys", "jwt.pub.pem")).read() not in pubs:
        raise Failure("the restored node did not get the fleet's JWT key")
    log("init: the restored node got the fleet's JWT key pair and a certificate")

    # 8. SIGTERM: each edge exits 0 within its stop_grace_period.
    for e in EDGES:
        grace = parse_duration(fleet.services[e].get("stop_grace_period", "10s"))
        proc = fleet.procs[e]
        began = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            raise Failure(f"{e} still runs {grace}s after SIGTERM:\n{fleet.tail(e)}")
        if code != 0:
            raise Failure(f"{e} exited {code} at SIGTERM:\n{fleet.tail(e)}")
        log(f"{e}: SIGTERM -> exit 0 in {time.time() - began:.1f}s (grace {grace:.0f}s)")


def parse_duration(value):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    if not m or not any(m.groups()):
        raise Failure(f"cannot read duration {value!r}")
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)


if __name__ == "__main__":
    sys.exit(main())
