"""The sandbox child: read the code, lock this process down, run the code.

Run by :func:`verl_trace.tools.sandbox.run_python` as ``python -I boot.py LIMITS_JSON`` with the
code on stdin, in a fresh session, a fresh temporary directory as cwd and a scrubbed environment.
Everything here is irreversible for the process and everything it could start:

* resource limits (address space, CPU seconds, file size, open files, no core dumps, no new
  processes for a non-root user), set hard so the code cannot raise them;
* a seccomp filter (libseccomp through ``pyseccomp``) that fails process and thread creation,
  ``execve``, limit changes, ``ptrace``, mounts, namespaces and signals to other processes with
  EPERM: this is what bounds a fork bomb for any user, root included (RLIMIT_NPROC does not
  apply to root and counts all processes of a user);
* Landlock (``py_landlock``, where the kernel has it): files may be written only below the
  working directory, no TCP connect/bind, no signals or abstract sockets outside the sandbox.

Then the code runs as ``__main__``; when its last statement is an expression its value is
printed, as in a notebook. Exit code 97 means the sandbox itself could not be set up.
"""

import ast
import errno
import json
import os
import resource
import sys
import traceback

SETUP_FAILED = 97
# Syscalls that fail with EPERM once the filter is loaded (those missing on an architecture are skipped).
DENIED = (
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    "setrlimit", "prlimit64", "ptrace", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal",
)


def set_limits(limits: dict) -> None:
    mib = 1024 * 1024
    cpu = int(limits["cpu_s"])
    for res, value in [
        (resource.RLIMIT_AS, int(limits["memory_mb"]) * mib),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * mib),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, 0),  # counts every process of the user, so 0 is the only safe value
    ]:
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(res, (soft, hard))


def syscall_filter():
    """The seccomp filter, built (libseccomp located, which runs ldconfig) but not loaded yet."""
    import pyseccomp as seccomp

    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        try:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except Exception:  # not a syscall on this architecture
            continue
    return flt


def landlock(workdir: str) -> None:
    from py_landlock import Landlock

    # Reads and executes anywhere; writes below workdir only; no TCP; IPC scoped to the sandbox.
    Landlock(strict=False).allow_read("/").allow_execute("/").allow_read_write(workdir).apply()


def run(code: str) -> int:
    tree = ast.parse(code, "<cell>", "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<cell>", "exec"), env)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), env)
        if value is not None:
            print(repr(value))
    return 0


def main() -> int:
    limits = json.loads(sys.argv[1])
    code = sys.stdin.read()
    try:  # in this order: locating the C libraries forks, which the limits and the filter forbid
        flt = syscall_filter()
        if limits["landlock"]:
            landlock(os.getcwd())
        set_limits(limits)
        flt.load()
    except Exception as e:
        print(f"sandbox setup failed: {type(e).__name__}: {e}", file=sys.stderr)
        return SETUP_FAILED
    try:
        return run(code)
    except SystemExit:
        raise
    except BaseException as e:  # the traceback without this file's frames
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        return 1


if __name__ == "__main__":
    sys.exit(main())
