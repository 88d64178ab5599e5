//! The process boundary of a Code Mode worker, set up after the interpreter has loaded what
//! scripts may use and before any script runs:
//!
//! - rlimits: CPU seconds (the kernel stops a spinning script), address space (a memory bomb
//!   gets `MemoryError` or dies), no new files or processes, no core dumps;
//! - Landlock, where the kernel has it: no filesystem access and no TCP at all;
//! - seccomp: an allow-list of the system calls a running interpreter needs (memory, time,
//!   signals, reading its stdin and writing its stdout and stderr); everything else, `open`,
//!   `socket`, `clone`, `execve` and the rest, fails with `EPERM`.
//!
//! Once applied, none of it can be undone by the process (`no_new_privs` is set).

use std::collections::BTreeMap;

use nix::sys::resource::{Resource, setrlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The limits of one worker.
#[derive(Debug, Clone, Copy)]
pub struct Confinement {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("setting the {0} limit failed: {1}")]
    Rlimit(&'static str, nix::Error),
    #[error("building the seccomp filter failed: {0}")]
    Seccomp(String),
}

/// Confine the calling process for good; says which layers are on.
pub fn confine(limits: Confinement) -> Result<String, SandboxError> {
    set_rlimits(limits)?;
    let landlock = restrict_filesystem();
    apply_seccomp()?;
    Ok(format!("rlimits, seccomp, landlock: {landlock}"))
}

fn set_rlimits(limits: Confinement) -> Result<(), SandboxError> {
    let set = |name, resource, soft: u64, hard: u64| {
        setrlimit(resource, soft, hard).map_err(|e| SandboxError::Rlimit(name, e))
    };
    // The soft limit sends SIGXCPU (which ends the process); the hard one SIGKILL.
    set(
        "CPU",
        Resource::RLIMIT_CPU,
        limits.cpu_seconds,
        limits.cpu_seconds + 1,
    )?;
    // The interpreter is loaded already: the limit is what it has plus what a script may add.
    let address_space = current_address_space().saturating_add(limits.memory_bytes);
    set("memory", Resource::RLIMIT_AS, address_space, address_space)?;
    set("file size", Resource::RLIMIT_FSIZE, 0, 0)?;
    set("core size", Resource::RLIMIT_CORE, 0, 0)?;
    set("processes", Resource::RLIMIT_NPROC, 0, 0)?;
    set("open files", Resource::RLIMIT_NOFILE, 8, 8)?;
    Ok(())
}

/// The process's mapped memory now (`VmSize`), in bytes.
fn current_address_space() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024)
}

/// No filesystem access and no TCP, where the kernel has Landlock.
fn restrict_filesystem() -> &'static str {
    use landlock::{ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus};
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self());
    match status.map(|s| s.ruleset) {
        Ok(RulesetStatus::FullyEnforced) => "on",
        Ok(RulesetStatus::PartiallyEnforced) => "partly (older kernel)",
        Ok(RulesetStatus::NotEnforced) | Err(_) => "not available on this kernel",
    }
}

/// The system calls a confined worker may make; everything else fails with `EPERM`.
fn apply_seccomp() -> Result<(), SandboxError> {
    let error = |e: &dyn std::fmt::Display| SandboxError::Seccomp(e.to_string());
    let fd_at_most = |max: u64| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Le, max)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map(|rule| vec![rule])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Reading only stdin (the gateway's messages); writing only stdout and stderr.
    rules.insert(libc::SYS_read, fd_at_most(0).map_err(|e| error(&e))?);
    rules.insert(libc::SYS_write, fd_at_most(2).map_err(|e| error(&e))?);
    rules.insert(libc::SYS_writev, fd_at_most(2).map_err(|e| error(&e))?);
    for syscall in [
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_lseek,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_sched_yield,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ] {
        rules.insert(syscall, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| error(&e))?,
    )
    .map_err(|e| error(&e))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| error(&e))?;
    seccompiler::apply_filter(&program).map_err(|e| error(&e))
}
