"""A local server speaking the part of the Hugging Face Hub API that `stctl models pull` uses:
serves the folder ROOT as repository REPO at REVISION (commit c0ffee), every file with the sha256
the Hub publishes for LFS files. Prints its port, then serves until killed.

    python3 fake_hub.py ROOT REPO REVISION
"""
import hashlib
import http.server
import json
import os
import sys

root, repo, revision = sys.argv[1:4]
COMMIT = "c0ffee"


def siblings():
    out = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in sorted(names):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            size = os.path.getsize(path)
            rel = os.path.relpath(path, root)
            out.append({"rfilename": rel, "size": size, "lfs": {"sha256": digest, "size": size}})
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == f"/api/models/{repo}/revision/{revision}?blobs=true":
            body = json.dumps({"sha": COMMIT, "siblings": siblings()}).encode()
        elif self.path.startswith(f"/{repo}/resolve/{COMMIT}/"):
            rel = self.path[len(f"/{repo}/resolve/{COMMIT}/"):]
            path = os.path.realpath(os.path.join(root, rel))
            if ".." in rel.split("/") or not os.path.isfile(path):
                return self.send_error(404)
            with open(path, "rb") as f:
                body = f.read()
        else:
            return self.send_error(404, "Repository not found")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
