"""Ordinary admin and developer work: what a good rule pack stays quiet on.

Each action runs like a behaviour (its own session, its own HOME and work directory,
lines typed into bash), so a rule that fires on the harness itself fires here too.
Some are deliberately close to attacker shapes (a download piped into a JSON
formatter, a base64-decoded secret, `chmod +x` on a build script, a single `id` or
`uname -r`, a log truncated in a project directory), because that is daily work.
"""

from __future__ import annotations

import dataclasses

from .model import Item

C_HELLO = r"""#include <stdio.h>
int main(void) { printf("hello\n"); return 0; }
"""

MAKEFILE = "hello: hello.c\n\tcc -O2 -o hello hello.c\n\nclean:\n\trm -f hello\n"

PY_SCRIPT = r"""import json, statistics, sys
rows = [{"n": i, "sq": i * i} for i in range(100)]
print(json.dumps({"mean": statistics.mean(r["sq"] for r in rows)}))
"""


def _file(path: str, text: str) -> str:
    """Shell lines that write `text` to `path` (a quoted heredoc: no expansion)."""
    return f"cat > {path} <<'CORPUS_EOF'\n{text}CORPUS_EOF\n"


GIT_SETUP = (
    "git config --global user.name 'Dev Eloper'\n"
    "git config --global user.email dev@example.com\n"
    "git config --global init.defaultBranch main\n"
)

_BENIGN: list[Item] = [
    Item(
        "benign-git-init-commit",
        "git init, add, commit, log",
        "git init -q project\ncd project\nprintf 'hello\\n' > README\ngit add README\n"
        "git commit -q -m 'first commit'\ngit log --oneline\n",
        setup=GIT_SETUP,
        needs=("git",),
    ),
    Item(
        "benign-git-branch-diff",
        "git branch, edit, diff, status, merge",
        "cd project\ngit checkout -q -b feature\nprintf 'more\\n' >> README\ngit diff\n"
        "git commit -q -am 'more'\ngit checkout -q main\ngit merge -q feature\ngit status -s\n",
        setup=GIT_SETUP + "git init -q project && cd project && echo a > README && git add README "
        "&& git commit -q -m init\n",
        needs=("git",),
    ),
    Item(
        "benign-git-clone-local",
        "git clone of a local repository",
        "git clone -q upstream checkout\ngit -C checkout log --oneline -n 1\n",
        setup=GIT_SETUP
        + "git init -q upstream && cd upstream && echo a > f && git add f && git commit -q -m a\n",
        needs=("git",),
    ),
    Item(
        "benign-make-build",
        "make building a C program, then running it",
        "make -s\n./hello\nmake -s clean\n",
        setup=_file("hello.c", C_HELLO) + _file("Makefile", MAKEFILE),
        needs=("make", "cc"),
    ),
    Item(
        "benign-gcc-compile",
        "gcc compiling and running a program",
        "gcc -O2 -Wall -o hello hello.c\n./hello\n",
        setup=_file("hello.c", C_HELLO),
        needs=("gcc",),
    ),
    Item(
        "benign-python-script",
        "A python script computing something",
        "python3 stats.py\n",
        setup=_file("stats.py", PY_SCRIPT),
        needs=("python3",),
    ),
    Item(
        "benign-python-json-tool",
        "JSON from a local API pretty-printed with python",
        "curl -s @HTTP@/index.json | python3 -m json.tool\n",
        needs=("curl", "python3"),
    ),
    Item(
        "benign-pip-list",
        "pip list",
        "python3 -m pip list --disable-pip-version-check 2>/dev/null | head -5\n",
        needs=("python3",),
    ),
    Item(
        "benign-dpkg-query",
        "Package queries: dpkg -l, apt-cache policy",
        "dpkg -l | head -20\napt-cache policy bash\n",
        needs=("dpkg", "apt-cache"),
    ),
    Item(
        "benign-tar-gzip",
        "tar and gzip of a project, listing, extracting",
        "tar czf project.tgz src\ntar tzf project.tgz\nmkdir out\ntar xzf project.tgz -C out\n"
        "gzip -k src/a.txt\ngunzip -c src/a.txt.gz | wc -c\n",
        setup="mkdir -p src && seq 1 1000 > src/a.txt && seq 1 50 > src/b.txt\n",
    ),
    Item(
        "benign-xz-zip",
        "xz and zip archives",
        "xz -k data.txt\nzip -q data.zip data.txt\nunzip -l data.zip\n",
        setup="seq 1 5000 > data.txt\n",
        needs=("xz", "zip", "unzip"),
    ),
    Item(
        "benign-find-tree",
        "find in a source tree, with xargs",
        "find . -name '*.c' -type f\nfind . -name '*.txt' | xargs wc -l\nfind . -newer a/x.c\n",
        setup="mkdir -p a/b c && touch a/x.c a/b/y.c c/z.txt && seq 1 9 > c/n.txt\n",
    ),
    Item(
        "benign-grep-sed-awk",
        "grep, sed, awk, sort, uniq over a log",
        "grep -c ERROR app.log\nsed -n '1,3p' app.log\nawk '{print $2}' app.log | sort | uniq -c\n"
        "sed -i 's/ERROR/error/' app.log\n",
        setup="printf '1 INFO start\\n2 ERROR disk\\n3 INFO ok\\n4 ERROR net\\n' > app.log\n",
    ),
    Item(
        "benign-curl-local-server",
        "curl GET from a local web server, saved to a file",
        "curl -s -o index.json @HTTP@/index.json\ncurl -sI @HTTP@/index.json\n",
        needs=("curl",),
    ),
    Item(
        "benign-install-script-download-then-heredoc",
        "An install script: downloads to files (curl -o, wget), then runs a here-document",
        "sh install.sh\n",
        setup=(
            "printf '%s\\n' 'curl -s -o index.json @HTTP@/index.json'"
            " 'wget -q @HTTP@/release.tar.gz' 'bash <<EOF' 'tar tzf release.tar.gz' 'EOF'"
            " > install.sh\n"
        ),
        needs=("curl", "wget"),
    ),
    Item(
        "benign-wget-release-unpack",
        "A release tarball downloaded with wget and unpacked",
        "wget -q -O- @HTTP@/release.tar.gz | tar xz\ncat release/README\n",
        needs=("wget",),
    ),
    Item(
        "benign-curl-post-json",
        "A JSON POST to a local API",
        "curl -s -X POST -H 'Content-Type: application/json' -d '{\"build\": 42}' "
        "@HTTP@/api/builds\n",
        needs=("curl",),
    ),
    Item(
        "benign-ssh-keygen",
        "ssh-keygen of a deploy key in a project directory",
        "ssh-keygen -q -t ed25519 -N '' -C deploy -f deploy_key\nssh-keygen -l -f deploy_key.pub\n",
        needs=("ssh-keygen",),
    ),
    Item(
        "benign-shell-loop",
        "A shell loop over files",
        'for i in $(seq 1 20); do printf \'%s\\n\' "$i" > "f$i.txt"; done\nls | wc -l\n'
        "cat f1.txt f2.txt\n",
    ),
    Item(
        "benign-log-rotation",
        "Log rotation of an application log in its own directory",
        "mv logs/app.log logs/app.log.1\ngzip -f logs/app.log.1\ntouch logs/app.log\n"
        "truncate -s 0 logs/worker.log\nls -l logs\n",
        setup="mkdir -p logs && seq 1 2000 > logs/app.log && seq 1 20 > logs/worker.log\n",
    ),
    Item(
        "benign-ps-top",
        "Looking at processes: ps, top",
        "ps -ef | head -5\ntop -b -n 1 | head -5\n",
    ),
    Item(
        "benign-df-du-free",
        "Disk and memory use: df, du, free",
        "df -h\ndu -sh .\nfree -m\nuptime\n",
    ),
    Item(
        "benign-id-alone",
        "A single id",
        "id\n",
    ),
    Item(
        "benign-uname-alone",
        "A single uname -r",
        "uname -r\n",
    ),
    Item(
        "benign-ip-addr-alone",
        "A single ip addr",
        "ip -brief addr\n",
        needs=("ip",),
    ),
    Item(
        "benign-journalctl-tail",
        "The last lines of the journal",
        "journalctl -n 20 --no-pager 2>/dev/null | tail -3\n",
        needs=("journalctl",),
    ),
    Item(
        "benign-systemctl-status",
        "systemctl status of a service",
        "systemctl status --no-pager cron 2>/dev/null | head -3\n",
        needs=("systemctl",),
        requires=("systemd",),
    ),
    Item(
        "benign-crontab-list",
        "crontab -l",
        "crontab -l 2>/dev/null\n",
        needs=("crontab",),
    ),
    Item(
        "benign-checksums",
        "Checksums of a download: sha256sum, md5sum, openssl dgst",
        "sha256sum data.bin\nmd5sum data.bin\nopenssl dgst -sha256 data.bin\n",
        setup="head -c 100000 /dev/urandom > data.bin\n",
        needs=("openssl",),
    ),
    Item(
        "benign-base64-secret-decode",
        "A configuration secret decoded with base64 into a file",
        "echo c2VjcmV0LXZhbHVlCg== | base64 -d > secret.txt\nbase64 secret.txt\n",
        needs=("base64",),
    ),
    Item(
        "benign-hexdump-rev-pipelines",
        "Hex dumps paged and patched, reversed text sorted: xxd, xxd -r -p, rev",
        "xxd data.bin | head -3\nxxd -p data.bin | head -c 32 | xxd -r -p > head.bin\n"
        "rev names.txt | sort | head -2\nxxd data.bin | grep -c 0000\n",
        setup="head -c 256 /dev/urandom > data.bin\nprintf 'alice\\nbob\\n' > names.txt\n",
        needs=("xxd", "rev"),
    ),
    Item(
        "benign-chmod-build-script",
        "A build script made executable and run",
        "chmod +x build.sh\n./build.sh\nchmod 644 notes.txt\n",
        setup="printf '#!/bin/sh\\necho building\\nls >/dev/null\\n' > build.sh\ntouch notes.txt\n",
    ),
    Item(
        "benign-text-tools",
        "head, tail, wc, cut, tr, diff, patch",
        "head -3 a.txt\ntail -3 a.txt\nwc -l a.txt\ncut -c1-2 a.txt | tr 0-9 a-j | head -2\n"
        "diff a.txt b.txt > fix.patch\npatch -s a.txt < fix.patch\n",
        setup="seq 1 30 > a.txt && seq 1 31 > b.txt\n",
    ),
    Item(
        "benign-copy-move-links",
        "mkdir, cp -r, mv, ln -s, rm -r in a project",
        "mkdir -p build/out\ncp -r src build/\nmv build/src build/copy\nln -s copy build/current\n"
        "ls -la build\nrm -r build\n",
        setup="mkdir -p src && seq 1 5 > src/a\n",
    ),
    Item(
        "benign-openssl-dev-cert",
        "A self-signed certificate for local development",
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout dev.key -out dev.crt -days 30 "
        "-subj /CN=localhost 2>/dev/null\nopenssl x509 -in dev.crt -noout -subject\n",
        needs=("openssl",),
    ),
    Item(
        "benign-node-script",
        "A node one-liner computing something",
        "node -e 'console.log([1, 2, 3].map(x => x * 2).join(\",\"))'\n",
        needs=("node",),
    ),
    Item(
        "benign-perl-one-liner",
        "A perl one-liner editing a file in place",
        "perl -pi -e 's/foo/bar/g' conf.txt\ncat conf.txt\n",
        setup="printf 'foo=1\\nfoo=2\\n' > conf.txt\n",
        needs=("perl",),
    ),
    Item(
        "benign-java-version",
        "java -version",
        "java -version 2>&1 | head -1\n",
        needs=("java",),
    ),
    Item(
        "benign-env-which",
        "env, which, date, hostname for a build log",
        "env | sort | head -3\nwhich python3 git\ndate -u\nhostname\n",
    ),
    Item(
        "benign-sleep-timeout",
        "A command under timeout, a short sleep",
        "timeout 2 sleep 0.2\nsleep 0.1\n",
    ),
    Item(
        "benign-gpg-version",
        "gpg --version",
        "gpg --version | head -1\n",
        needs=("gpg",),
    ),
    Item(
        "benign-getent-hosts",
        "A name lookup of localhost",
        "getent hosts localhost\n",
    ),
    Item(
        "benign-python-venv-compile",
        "python byte-compiling a module",
        "python3 -m py_compile stats.py\nls __pycache__\n",
        setup=_file("stats.py", PY_SCRIPT),
        needs=("python3",),
    ),
    Item(
        "benign-kubectl-client-version",
        "kubectl version --client",
        "kubectl version --client 2>/dev/null | head -1\n",
        needs=("kubectl",),
    ),
    Item(
        "benign-ss-listening",
        "The listening ports (ss -ltn)",
        "ss -ltn | head -5\n",
        needs=("ss",),
    ),
    Item(
        "benign-sort-large",
        "sort and uniq over generated data",
        "seq 1 20000 | awk '{print $1 % 97}' | sort -n | uniq -c | sort -rn | head -3\n",
    ),
    Item(
        "benign-npm-run-script",
        "npm run of a package.json script (node starts a shell, as npm does)",
        "npm run --silent build\n",
        setup=_file(
            "package.json",
            '{"name": "app", "version": "1.0.0", "scripts": {"build": "echo building && ls"}}\n',
        ),
        needs=("npm",),
    ),
    Item(
        "benign-backup-etc",
        "/etc backed up into the admin's backup directory",
        "mkdir -p backups\ntar czf backups/etc-$(date +%F).tgz /etc 2>/dev/null\nls backups\n",
    ),
    Item(
        "benign-ssh-pubkey-perms",
        "A key pair's permissions fixed and its public half shown",
        "chmod 600 ~/.ssh/deploy\nchmod 644 ~/.ssh/deploy.pub\ncat ~/.ssh/deploy.pub\n"
        "ls -la ~/.ssh\n",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -C deploy -f ~/.ssh/deploy\n",
        needs=("ssh-keygen",),
    ),
    Item(
        "benign-dd-disk-image",
        "A disk image made with dd and formatted as a file",
        "dd if=/dev/zero of=disk.img bs=1M count=8 status=none\nls -l disk.img\n",
    ),
    Item(
        "benign-bug-report-info",
        "Versions gathered for a bug report: uname -a, os-release, python",
        "uname -a\ncat /etc/os-release\npython3 --version\n",
    ),
    Item(
        "benign-grep-config-password",
        "A project's configuration searched for its password setting",
        "grep -rn 'password' config/\n",
        setup="mkdir -p config && printf 'db:\\n  user: app\\n  password: ${DB_PASSWORD}\\n'"
        " > config/app.yml\n",
    ),
    Item(
        "benign-gpg-encrypt-backup",
        "A backup encrypted with gpg before it is copied away",
        "tar czf site.tgz site\ngpg --batch --yes --pinentry-mode loopback --passphrase backup "
        "-c -o site.tgz.gpg site.tgz\nls -l site.tgz.gpg\n",
        setup="mkdir -p site && seq 1 100 > site/index.html\n"
        "mkdir -m 700 -p ~/.gnupg\n"
        "echo warm | gpg --batch --pinentry-mode loopback --passphrase x -c -o /dev/null\n",
        cleanup="gpgconf --kill all\n",
        needs=("gpg", "gpgconf"),
    ),
    Item(
        "benign-find-old-logs",
        "Old compressed logs found for cleanup",
        "find /var/log -name '*.gz' -mtime +30 2>/dev/null | head -5\n"
        "find . -name '*.tmp' -delete\n",
        setup="touch a.tmp b.tmp\n",
    ),
    Item(
        "benign-python-http-server",
        "A developer serving a directory with python's http.server for a moment",
        "@PY@ -m http.server --bind 127.0.0.1 @FREEPORT@ > server.log 2>&1 &\n"
        "for i in 1 2 3 4 5 6 7 8 9 10; do\n"
        "  curl -sf -o /dev/null http://127.0.0.1:@FREEPORT@/ && break\n"
        "  sleep 0.2\n"
        "done\n"
        "kill $!\n",
        needs=("curl",),
    ),
]

# Ordinary work is not held to the behaviours' 5 s: pip, dpkg or gpg can take longer on
# a loaded machine, and a timed-out action would be a false positive never measured.
BENIGN: list[Item] = [dataclasses.replace(item, timeout_s=15.0) for item in _BENIGN]
