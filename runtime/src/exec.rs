//! The final step: execve the command, looking `argv[0]` up in the
//! container's `PATH` the way execvp(3) does. Everything is prepared before
//! clone so the child only makes syscalls.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::error::{Result, RuntimeError};
use crate::spec::RunSpec;
use crate::sys::{CArgs, Sys};

#[derive(Debug)]
pub(crate) struct ExecPlan {
    /// `argv[0]` as the user gave it, for the error message.
    pub(crate) cmd: OsString,
    candidates: Vec<CString>,
    argv: CArgs,
    envp: CArgs,
}

impl ExecPlan {
    pub(crate) fn new(spec: &RunSpec) -> Result<Self> {
        let nul = |field| {
            move |_| RuntimeError::InvalidSpec {
                field,
                reason: "strings must not contain NUL bytes".to_owned(),
            }
        };
        let cmd = spec.argv.first().cloned().unwrap_or_default();
        let candidates = candidates(&cmd, spec.path_var())
            .into_iter()
            .map(|p| CString::new(p.into_os_string().into_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(nul("argv"))?;
        let argv = CArgs::new(&spec.argv).map_err(nul("argv"))?;
        let envp = CArgs::new(env_strings(&spec.env)).map_err(nul("env"))?;
        Ok(ExecPlan {
            cmd,
            candidates,
            argv,
            envp,
        })
    }
}

/// `KEY=VALUE` strings; a key given twice keeps its first place and its last
/// value, since getenv(3) would see only the first.
pub(crate) fn env_strings(env: &[(OsString, OsString)]) -> Vec<OsString> {
    let mut out: Vec<(&OsStr, &OsStr)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        match out.iter_mut().find(|(seen, _)| *seen == k.as_os_str()) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out.into_iter()
        .map(|(k, v)| {
            let mut kv = k.to_owned();
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect()
}

/// The paths execvp would try for `cmd`: `cmd` itself if it has a `/`, else
/// `dir/cmd` for each non-empty `dir` in `path` (empty entries, which mean
/// the cwd, are skipped).
pub(crate) fn candidates(cmd: &OsStr, path: &OsStr) -> Vec<PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(cmd)];
    }
    path.as_bytes()
        .split(|b| *b == b':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(OsStr::from_bytes(dir)).join(cmd))
        .collect()
}

/// Tries each candidate in turn. Returns only on failure (or `Ok` from a
/// fake), with execvp's choice of errno: EACCES if any candidate had it,
/// else the last "not here" error; anything else stops the search.
pub(crate) fn exec(plan: &ExecPlan, sys: &dyn Sys) -> Result<(), Errno> {
    let mut err = Errno::NOENT;
    let mut denied = false;
    for path in &plan.candidates {
        match sys.execve(path, &plan.argv, &plan.envp) {
            Ok(()) => return Ok(()),
            Err(Errno::ACCESS) => denied = true,
            Err(
                e @ (Errno::NOENT | Errno::NOTDIR | Errno::STALE | Errno::NODEV | Errno::TIMEDOUT),
            ) => {
                err = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(if denied { Errno::ACCESS } else { err })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, FakeSys};

    #[test]
    fn candidates_follow_path_unless_cmd_has_a_slash() {
        let got = candidates(OsStr::new("ls"), OsStr::new("/usr/bin::/bin"));
        assert_eq!(
            got,
            [PathBuf::from("/usr/bin/ls"), PathBuf::from("/bin/ls")]
        );
        assert_eq!(
            candidates(OsStr::new("./x"), OsStr::new("/bin")),
            [PathBuf::from("./x")]
        );
        assert_eq!(
            candidates(OsStr::new("/bin/foo"), OsStr::new("/bin")),
            [PathBuf::from("/bin/foo")]
        );
    }

    #[test]
    fn later_env_entries_override_in_place() {
        let env = [("A", "1"), ("B", "2"), ("A", "3")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(
            env_strings(&env),
            [OsString::from("A=3"), OsString::from("B=2")]
        );
    }

    fn plan(argv0: &str) -> ExecPlan {
        let mut spec = RunSpec::new("/r", "h", vec![argv0.into(), "-x".into()]);
        spec.env = vec![("PATH".into(), "/a:/b".into()), ("K".into(), "v".into())];
        ExecPlan::new(&spec).unwrap()
    }

    #[test]
    fn exec_passes_argv_and_env_and_stops_at_first_success() {
        let fake = FakeSys::new().fail_nth(0, Errno::NOENT);
        exec(&plan("sh"), &fake).unwrap();
        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[1],
            Call::Exec {
                path: "/b/sh".into(),
                argv: vec!["sh".into(), "-x".into()],
                envp: vec!["PATH=/a:/b".into(), "K=v".into()],
            }
        );
    }

    #[test]
    fn exec_errno_is_chosen_like_execvp() {
        let all = |e| FakeSys::new().fail_when(|c| matches!(c, Call::Exec { .. }), e);
        assert_eq!(exec(&plan("nope"), &all(Errno::NOENT)), Err(Errno::NOENT));
        let first_denied = FakeSys::new()
            .fail_nth(0, Errno::ACCESS)
            .fail_when(|c| matches!(c, Call::Exec { .. }), Errno::NOENT);
        assert_eq!(exec(&plan("x"), &first_denied), Err(Errno::ACCESS));
        let fatal = all(Errno::NOEXEC);
        assert_eq!(exec(&plan("x"), &fatal), Err(Errno::NOEXEC));
        assert_eq!(fatal.calls().len(), 1);
    }
}
