"""A small Hugging Face Hub-compatible HTTP server for tests: real sockets, files on disk, tokens enforced.

No Hub server with uploads exists on PyPI, so this implements just the endpoints the real `huggingface_hub` 2.4
client calls for `whoami`, `create_repo`, `create_branch`, `list_repo_refs`, `repo_info`/`model_info`,
`list_repo_tree`, `upload_folder` (preupload + NDJSON commit, regular files; deletions), pull requests, and
`hf_hub_download`/`snapshot_download` (HEAD + GET on `resolve/` with ETag and X-Repo-Commit).

Every file is sent in "regular" mode (base64 inside the commit), so no LFS or Xet storage is involved; the
preupload answer carries each existing file's git blob id, which is what lets the client skip unchanged files.
Point a client at it with `HF_ENDPOINT=server.url` (read when `huggingface_hub` is first imported).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub) gives a regular file: sha1 over a `blob <size>\\0` header and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, str]  # path -> blob id (git sha1)
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1" -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    prs: int = 0


class HubState:
    """Repos, refs and commits in memory; file contents content-addressed on disk under `root/blobs`."""

    def __init__(self, root: Path, tokens: dict[str, dict[str, Any]]) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = tokens  # token -> {"name": user, "orgs": [...], "role": "read" | "write"}
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self.unknown: list[tuple[str, str]] = []  # requests no route matched
        self.downloads: list[tuple[str, str | None]] = []  # (file, Range header or "HEAD") of every file request
        self.card_checks: list[dict[str, Any]] = []  # README metadata the client asked us to validate

    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.write_bytes(data)
        return oid

    def blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def commit(self, repo: Repo, ref: str, message: str, files: dict[str, str], parent: str | None) -> Commit:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        payload = json.dumps([parent, message, sorted(files.items()), len(repo.commits)]).encode()
        oid = hashlib.sha1(payload).hexdigest()
        c = Commit(oid=oid, parent=parent, message=message, files=dict(files), date=stamp)
        repo.commits[oid] = c
        repo.refs[ref] = oid
        return c

    def resolve(self, repo: Repo, revision: str) -> Commit | None:
        if revision in repo.refs:
            return repo.commits[repo.refs[revision]]
        return repo.commits.get(revision)

    def commits_on(self, repo_id: str, ref: str = "main") -> list[Commit]:
        """History of a ref, newest first (for tests)."""
        repo = self.repos[repo_id]
        out, oid = [], repo.refs.get(ref)
        while oid is not None:
            out.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return out


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Handler(BaseHTTPRequestHandler):
    server_version = "modelops-test-hub/0.1"
    state: HubState  # set on the subclass by HubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        self.state.requests.append((method, url.path))
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        try:
            with self.state.lock:
                self._route(method, parts)
        except HubError as exc:
            self._send_json({"error": exc.message}, exc.status, {"X-Error-Code": exc.code} if exc.code else None)

    def _route(self, method: str, p: list[str]) -> None:
        if p[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if p[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if p[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if len(p) >= 4 and p[:2] == ["api", "models"]:
            repo_id, rest = f"{p[2]}/{p[3]}", p[4:]
            if not rest and method == "GET":
                return self._info(repo_id, "main")
            if rest[:1] == ["revision"] and len(rest) == 2 and method == "GET":
                return self._info(repo_id, rest[1])
            if rest[:1] == ["preupload"] and len(rest) == 2 and method == "POST":
                return self._preupload(repo_id, rest[1])
            if rest[:1] == ["commit"] and len(rest) == 2 and method == "POST":
                return self._commit(repo_id, rest[1])
            if rest[:1] == ["branch"] and len(rest) == 2 and method == "POST":
                return self._create_branch(repo_id, rest[1])
            if rest == ["refs"] and method == "GET":
                return self._refs(repo_id)
            if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if rest == ["discussions"] and method == "POST":
                return self._create_pr(repo_id)
            if rest[:1] == ["discussions"] and len(rest) == 2 and method == "GET":
                return self._pr_details(repo_id, int(rest[1]))
        if len(p) >= 5 and p[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]), head=method == "HEAD")
        self.state.unknown.append((method, self.path))
        raise HubError(404, f"no route for {method} {self.path}")

    def _send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # -- auth -------------------------------------------------------------------------------------------------
    def _user(self, required: bool = True) -> dict[str, Any] | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        if token is None:
            if required:
                raise HubError(401, "Invalid credentials in Authorization header")
            return None
        user = self.state.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user(required=write)
        repo = self.state.repos.get(repo_id)
        namespace = repo_id.split("/")[0]
        can_see = repo is not None and (
            not repo.private or (user is not None and namespace in [user["name"], *user.get("orgs", [])])
        )
        if not can_see:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        if write:
            self._check_write(user, namespace)
        return repo

    def _check_write(self, user: dict[str, Any] | None, namespace: str) -> None:
        if user is None or user.get("role") != "write" or namespace not in [user["name"], *user.get("orgs", [])]:
            raise HubError(403, f"You don't have the rights to write to {namespace}")

    def _commit_for(self, repo: Repo, revision: str) -> Commit:
        c = self.state.resolve(repo, revision)
        if c is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return c

    # -- endpoints ------------------------------------------------------------------------------------------
    def _whoami(self) -> None:
        user = self._user()
        assert user is not None
        orgs = [{"name": o, "type": "org"} for o in user.get("orgs", [])]
        role = user.get("role", "read")
        self._send_json({"type": "user", "name": user["name"], "orgs": orgs, "auth": {"accessToken": {"role": role}}})

    def _validate_yaml(self) -> None:
        """A subset of the Hub's model card metadata checks: types of the fields modelops writes."""
        import yaml

        content = json.loads(self.body)["content"]
        errors: list[str] = []
        meta: Any = {}
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1]) or {}
            except yaml.YAMLError as exc:
                errors.append(f"YAML: {exc}")
        base = meta.get("base_model") if isinstance(meta, dict) else None
        for b in [base] if isinstance(base, str) else base or []:
            if not isinstance(b, str) or b.count("/") != 1:
                errors.append(f'"base_model" must be repo ids, got {b!r}')
        relation = meta.get("base_model_relation") if isinstance(meta, dict) else None
        if relation is not None and relation not in ("adapter", "merge", "quantized", "finetune"):
            errors.append(f'"base_model_relation" must be adapter|merge|quantized|finetune, got {relation!r}')
        if relation is not None and not base:
            errors.append('"base_model_relation" needs "base_model"')
        tags = meta.get("tags") if isinstance(meta, dict) else None
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            errors.append('"tags" must be a list of strings')
        self.state.card_checks.append(meta if isinstance(meta, dict) else {})
        if errors:
            return self._send_json({"errors": [{"message": e} for e in errors], "warnings": []}, 400)
        self._send_json({"errors": [], "warnings": []})

    def _create_repo(self) -> None:
        user = self._user()
        body = json.loads(self.body or b"{}")
        if body.get("type") not in (None, "model"):
            raise HubError(400, "only model repos are supported by this test server")
        namespace = body.get("organization") or (user or {}).get("name")
        self._check_write(user, namespace)
        repo_id = f"{namespace}/{body['name']}"
        if repo_id in self.state.repos:  # the real Hub answers 409 with the url too; the client reads it
            url = f"{self.base_url}/{repo_id}"
            return self._send_json({"error": "You already created this model repo", "url": url}, 409)
        repo = Repo(repo_id=repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        self.state.repos[repo_id] = repo
        oid = self.state.put_blob(GITATTRIBUTES)
        self.state.commit(repo, "main", "initial commit", {".gitattributes": oid}, None)
        self._send_json({"url": f"{self.base_url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        c = self._commit_for(repo, revision)
        self._send_json(
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": c.oid,
                "lastModified": c.date,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(c.files)],
            }
        )

    def _preupload(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        c = self.state.resolve(repo, "main" if self.query.get("create_pr") else revision)
        existing = c.files if c is not None else {}
        body = json.loads(self.body)
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": existing.get(f["path"])}
            for f in body["files"]
        ]
        self._send_json({"files": files, "commitOid": c.oid if c else None})

    def _commit(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        create_pr = self.query.get("create_pr") == "1"
        if create_pr:
            repo.prs += 1
            ref = f"refs/pr/{repo.prs}"
            repo.refs[ref] = repo.refs["main"]
        else:
            ref = revision
        head = self.state.resolve(repo, ref)
        if head is None or ref not in repo.refs:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if header.get("parentCommit") and header["parentCommit"] != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = self.state.put_blob(base64.b64decode(value["content"]))
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] == "deletedFolder":
                files = {k: v for k, v in files.items() if not k.startswith(value["path"].rstrip("/") + "/")}
            elif item["key"] != "header":
                raise HubError(400, f"this test server accepts regular files only, not {item['key']}")
        message = header.get("summary", "")
        c = self.state.commit(repo, ref, message, files, head.oid)
        pr_url = f"{self.base_url}/{repo_id}/discussions/{repo.prs}" if create_pr else None
        self._send_json(
            {"success": True, "commitOid": c.oid, "commitUrl": f"{self.base_url}/{repo_id}/commit/{c.oid}",
             "commitMessage": message, "pullRequestUrl": pr_url}
        )  # fmt: skip

    def _create_branch(self, repo_id: str, branch: str) -> None:
        repo = self._repo(repo_id, write=True)
        if branch in repo.refs:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        start = json.loads(self.body or b"{}").get("startingPoint") or "main"
        repo.refs[branch] = self._commit_for(repo, start).oid
        self._send_json({})

    def _refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        branches = [
            {"name": r, "ref": f"refs/heads/{r}", "targetCommit": oid}
            for r, oid in repo.refs.items()
            if not r.startswith("refs/")
        ]
        self._send_json({"branches": branches, "converts": [], "tags": []})

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        repo = self._repo(repo_id)
        c = self._commit_for(repo, revision)
        recursive = self.query.get("recursive", "").lower() in ("true", "1")
        prefix = prefix.strip("/")
        entries: dict[str, dict[str, Any]] = {}
        for path, oid in sorted(c.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rel = path[len(prefix) + 1 :] if prefix else path
            parts = rel.split("/")
            for depth in range(1, len(parts)):  # folders on the way
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
            if recursive or len(parts) == 1:
                size = (self.state.root / "blobs" / oid).stat().st_size
                entries[path] = {"type": "file", "path": path, "oid": oid, "size": size}
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        self._send_json(list(entries.values()))

    def _create_pr(self, repo_id: str) -> None:
        repo = self._repo(repo_id, write=True)
        body = json.loads(self.body)
        if not body.get("pullRequest"):
            raise HubError(400, "this test server only opens pull requests")
        repo.prs += 1
        repo.refs[f"refs/pr/{repo.prs}"] = repo.refs["main"]
        self._send_json({"num": repo.prs, "url": f"{self.base_url}/{repo_id}/discussions/{repo.prs}"})

    def _pr_details(self, repo_id: str, num: int) -> None:
        repo = self._repo(repo_id)
        if f"refs/pr/{num}" not in repo.refs:
            raise HubError(404, f"no pull request {num}")
        self._send_json(
            {"title": f"PR {num}", "num": num, "author": {"name": "tester"}, "createdAt": "2024-01-01T00:00:00.000Z",
             "status": "draft", "repo": {"name": repo_id, "type": "model"}, "isPullRequest": True, "events": [],
             "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [], "diff": ""}
        )  # fmt: skip

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo(repo_id)
        c = self._commit_for(repo, revision)
        oid = c.files.get(path)
        if oid is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = self.state.blob(oid)
        wanted = self.headers.get("Range")
        self.state.downloads.append((path, wanted if not head else "HEAD"))
        status = 200
        if wanted and wanted.startswith("bytes=") and not head:  # a header read: only the asked bytes
            first, _, last = wanted[len("bytes=") :].partition("-")
            data = data[int(first) : int(last) + 1 if last else None]
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{oid}"')
        self.send_header("X-Repo-Commit", c.oid)
        self.end_headers()
        if not head:
            self.wfile.write(data)


class HubServer:
    """`with HubServer(root, tokens) as hub:` a live server on 127.0.0.1 at a free port; `hub.url`, `hub.state`."""

    def __init__(self, root: Path, tokens: dict[str, dict[str, Any]]) -> None:
        self.state = HubState(root, tokens)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def file_url(self, repo_id: str, revision: str, path: str) -> str:
        return f"{self.url}/{repo_id}/resolve/{quote(revision, safe='')}/{path}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
