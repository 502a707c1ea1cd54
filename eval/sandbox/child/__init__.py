"""Supervisor, box set-up and in-process guards of :mod:`eval.sandbox`. Never imported by the harness and
importing nothing of it: the standard library only, run by the processes that the harness starts, from a
copy of this directory in each run's directory (``<run>/lib/child``; see ``__main__.py``)::

    python -I -S -B <run>/lib/child/__main__.py launch <spec.json>  # supervisor (the harness's user, no
                                                                    # isolation itself)
    python -I -B <run>/lib/child/__main__.py guard <config json>    # inside a box, after the exec:
                                                                    # seccomp, audit hook, then "serve" /
                                                                    # "test" / "run"
    python -I -S -B <run>/lib/child/__main__.py kill <uid>          # SIGKILL every process of <uid> (degraded
                                                                    # root mode)

Process tree of one HumanEval program (``mode == "check"``)::

    supervisor S ──┬── keeper C_P ── init I_P ── program P  (prompt + completion; answers calls on fds 3/4)
                   └── keeper C_T ── init I_T ── tester  T  (prompt + test; check(candidate) → verdict fd 5)

A *box* is a keeper C (forked by S; it unshares the namespaces and waits), an init I (pid 1 of the box's
new pid namespace; it builds the read-only file system view, forks the workload and reaps) and the workload
W (rlimits, uid switch or capability drop, no_new_privs, Landlock, then ``execve`` of the interpreter, whose
first act is this package's ``guard``: a seccomp filter and an audit hook, before any untrusted code).

The verdict is T's: T runs only dataset code (``prompt + test``) and calls ``check(candidate)``, where
``candidate`` sends its arguments to P as tagged JSON and receives the return value as plain data (never
objects, never pickles). T writes ``{"passed": true}`` to a pipe that only T and S hold and S requires T's
exit status 0 as well. P can neither reach that pipe nor T (another pid, mount, net and ipc namespace, its
own Landlock domain, no ptrace/process_vm/pidfd syscalls), so the only thing P can influence is the data it
returns.  Every box reports the mechanisms it got on a status pipe (closed before untrusted code runs).

Modules, in the order a run meets them:

    supervisor  S: ``launch`` (start the boxes, time limit, verdict, kill and reap, the run's result)
    box         a box's processes up to the exec: keeper C, init I, workload W (rlimits, uid, capabilities)
    namespaces  unshare, id maps, uid switch, the box's file-system view (mounts)
    landlock    the Landlock domain of the workload
    guard       after the exec: seccomp, audit hook, then the workload
    seccomp     the seccomp-BPF filter
    workloads   P (``serve``), T (``test``), a plain program (``run``)
    codec       the tagged-JSON data that crosses between P and T
    libc        ctypes libc calls, kernel constants, status-pipe messages
"""
