"""Google Cloud stand-ins on loopback, for running deploy/deploy-streaming-service.sh for real.

* ``StubCli``: ``gcloud``/``bq``/``docker`` executables that record every call (argv and stdin)
  and answer from rules written like the real CLIs' answers (exit code, stdout, stderr). Without a
  rule, ``describe``/``show`` answer "not found" as the real CLIs do, everything else succeeds.
* ``FakeGoogleApis``: an HTTP proxy the REAL installed ``gcloud`` talks to (credentials disabled,
  every API endpoint overridden to plain HTTP through it). It records each request and answers
  from handlers, by default HTTP 400: a request that reached it proves gcloud parsed every flag
  and read every file it was given.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

# What the deploy script itself needs besides the cloud CLIs.
SCRIPT_TOOLS = ("bash", "dirname", "date", "git", "tr", "sed", "head", "mkdir", "env", "cat", "grep",
                "sleep")

STUB = r'''#!{python}
"""Stub {name}: records the call, answers from the first matching rule (see tests/cloud_fakes.py)."""
import json, os, sys
argv = [{name!r}] + sys.argv[1:]
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
state_dir = os.environ["STUB_STATE"]
with open(os.path.join(state_dir, "calls.jsonl"), "a") as log:
    log.write(json.dumps({{"argv": argv, "stdin": stdin}}) + "\n")
rules = json.load(open(os.path.join(state_dir, "rules.json")))
for index, rule in enumerate(rules):
    if argv[:len(rule["argv"])] != rule["argv"] or not all(t in argv for t in rule.get("contains", [])):
        continue
    if "times" in rule:
        counter = os.path.join(state_dir, f"rule-{{index}}.count")
        used = int(open(counter).read()) if os.path.exists(counter) else 0
        if used >= rule["times"]:
            continue
        open(counter, "w").write(str(used + 1))
    sys.stdout.write(rule.get("stdout", ""))
    sys.stderr.write(rule.get("stderr", ""))
    sys.exit(rule.get("exit", 0))
words = [a for a in argv[1:] if not a.startswith("-")]
if argv[0] == "gcloud" and "describe" in words:
    path = ".".join(words[:words.index("describe") + 1])
    sys.stderr.write(f"ERROR: (gcloud.{{path}}) NOT_FOUND: Requested entity was not found.\n")
    sys.exit(1)
if argv[0] == "bq" and "show" in words:
    sys.stderr.write(f"BigQuery error in show operation: Not found: {{argv[-1]}}\n")
    sys.exit(2)
'''


@dataclass
class Call:
    argv: list[str]
    stdin: str


class StubCli:
    """A bin dir with the script's tools and stub cloud CLIs; ``run`` executes the script."""

    def __init__(self, root: Path, tools: tuple[str, ...] = SCRIPT_TOOLS) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir(parents=True)
        self.state.mkdir()
        for tool in tools:
            found = shutil.which(tool)
            assert found, f"{tool} is needed by the deploy script"
            (self.bin / tool).symlink_to(found)
        for name in ("gcloud", "bq", "docker"):
            stub = self.bin / name
            stub.write_text(STUB.format(python=sys.executable, name=name))
            stub.chmod(0o755)
        self.rules: list[dict[str, Any]] = []

    def answer(self, *argv: str, exit: int = 0, stdout: str = "", stderr: str = "",
               contains: tuple[str, ...] = (), times: Optional[int] = None) -> None:
        """Calls starting with ``argv`` (and holding ``contains``) get this answer; earlier rules win."""
        rule: dict[str, Any] = {"argv": list(argv), "exit": exit, "stdout": stdout, "stderr": stderr,
                                "contains": list(contains)}
        if times is not None:
            rule["times"] = times
        self.rules.append(rule)

    def run(self, script: Path, *args: str, env: Optional[dict[str, str]] = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        (self.state / "rules.json").write_text(json.dumps(self.rules))
        full_env = {"PATH": str(self.bin), "HOME": str(self.state), "STUB_STATE": str(self.state),
                    "MDS_DEPLOY_RETRY_DELAY": "0", **(env or {})}
        return subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def calls(self) -> list[Call]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        return [Call(**json.loads(line)) for line in log.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The real gcloud against a loopback fake of the Google APIs
# ---------------------------------------------------------------------------------------------

APIS = ("serviceusage", "storage", "artifactregistry", "pubsub", "run", "dataflow", "cloudbuild",
        "cloudresourcemanager", "iam", "secretmanager", "logging", "compute")


@dataclass
class Request:
    method: str
    url: str
    body: str
    command: str  # gcloud's own name of the command that sent it (User-Agent "command/...")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Handler = Callable[[Request], Optional[tuple[int, Any]]]


@dataclass
class FakeGoogleApis:
    """Loopback HTTP proxy answering Google API calls; handlers return (status, json) or None."""

    handlers: list[Handler] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> "FakeGoogleApis":
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                agent = self.headers.get("User-Agent", "")
                command = re.search(r"command/(\S+)", agent)
                request = Request(self.command, self.path, self.rfile.read(length).decode("utf-8", "replace"),
                                  command.group(1) if command else "")
                fake.requests.append(request)
                status, payload = 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                  "message": "recorded by FakeGoogleApis"}}
                for handler in fake.handlers:
                    answer = handler(request)
                    if answer is not None:
                        status, payload = answer
                        break
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gcloud_env(self, config_dir: Path) -> dict[str, str]:
        """Environment for the real gcloud: its own config dir, no credentials, every API here."""
        env = {"CLOUDSDK_CONFIG": str(config_dir), "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
               "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
               "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
               "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
               "CLOUDSDK_PROXY_TYPE": "http", "CLOUDSDK_PROXY_ADDRESS": "127.0.0.1",
               "CLOUDSDK_PROXY_PORT": str(self._server.server_address[1])}
        for api in APIS:
            env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api.upper()}"] = f"http://{api}.googleapis.test/"
        return env


def real_gcloud_env(fake: FakeGoogleApis, config_dir: Path) -> dict[str, str]:
    """os.environ (for the real gcloud's own interpreter) plus the fake's settings."""
    return {**os.environ, **fake.gcloud_env(config_dir)}
