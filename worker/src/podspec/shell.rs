//! The shell text of a build pod: the `run.sh` command line of the build container and the
//! launcher init container's script.
//!
//! The launcher's entrypoint hands the build container's single argument to `bash -c`, so every
//! value written into it is quoted here with POSIX single quotes, which no character can escape
//! except the quote itself (written as `'\''`). Nothing in this module reads anything but its
//! arguments.

use crate::intake::BuildId;

/// The launcher's wrapper script that the build container's argument runs.
pub(crate) const RUN_SH: &str = "/opt/sd/run.sh";

/// Cache directories as the build container sees them (the `run.sh` disk-cache arguments).
pub(crate) const PIPELINE_CACHE_DIR: &str = "/sdpipelinecache";
/// See [`PIPELINE_CACHE_DIR`].
pub(crate) const JOB_CACHE_DIR: &str = "/sdjobcache";
/// See [`PIPELINE_CACHE_DIR`].
pub(crate) const EVENT_CACHE_DIR: &str = "/sdeventcache";

/// `value` as one POSIX shell word in single quotes. NUL characters are dropped: no shell word
/// can carry one, and dropping them cannot open the quotes.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\0' => {}
            '\'' => out.push_str("'\\''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// How the build token appears on the `run.sh` command line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TokenArg<'a> {
    /// A reference to an environment variable of the container (`"$SD_TOKEN"`): the token
    /// itself never appears in the pod spec. The name must be a shell identifier.
    FromEnv(&'static str),
    /// The token itself, quoted (Screwdriver's way: anyone who can read the pod can read it).
    Literal(&'a str),
}

/// The disk-cache arguments, present when the ecosystem's cache strategy is `disk`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheArgs<'a> {
    /// The cache strategy (`disk`).
    pub strategy: &'a str,
    /// Compress cache archives.
    pub compress: bool,
    /// Verify cache archives by md5.
    pub md5check: bool,
    /// Largest cache, in MB (0 = unlimited).
    pub max_size_mb: u64,
    /// Go threads of the cache tool.
    pub max_go_threads: u64,
}

/// Everything the `run.sh` command line carries, in executor-k8s' order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunArgs<'a> {
    /// `$1`: the build token.
    pub token: TokenArg<'a>,
    /// `$2`: the Screwdriver API.
    pub api: &'a str,
    /// `$3`: the Screwdriver store.
    pub store: &'a str,
    /// `$4`: the build timeout in minutes.
    pub timeout_minutes: u64,
    /// `$5`: the build id.
    pub build_id: BuildId,
    /// `$6`: the Screwdriver UI.
    pub ui: &'a str,
    /// `$7`..`$14`: the disk cache, when enabled.
    pub cache: Option<CacheArgs<'a>>,
}

/// The build container's argument: `/opt/sd/run.sh` followed by its quoted arguments.
pub(crate) fn run_command(args: &RunArgs<'_>) -> String {
    let token = match args.token {
        TokenArg::FromEnv(var) => format!("\"${var}\""),
        TokenArg::Literal(token) => quote(token),
    };
    let mut words = vec![RUN_SH.to_string(), token];
    let mut push = |value: &str| words.push(quote(value));
    push(args.api);
    push(args.store);
    push(&args.timeout_minutes.to_string());
    push(&args.build_id.to_string());
    push(args.ui);
    if let Some(cache) = args.cache {
        push(cache.strategy);
        push(PIPELINE_CACHE_DIR);
        push(JOB_CACHE_DIR);
        push(EVENT_CACHE_DIR);
        push(if cache.compress { "true" } else { "false" });
        push(if cache.md5check { "true" } else { "false" });
        push(&cache.max_size_mb.to_string());
        push(&cache.max_go_threads.to_string());
    }
    words.join(" ")
}

/// The launcher init container's `sh -c` script.
///
/// It records when it starts and ends in `/workspace/metrics` (run.sh pushes the durations to
/// the pushgateway), and installs the launcher into the node's per-version hostPath only when
/// it is missing there: into a private temporary directory first, then moved into place
/// without overwriting, so builds starting together on a node never see a half-copied launcher.
/// With the disk cache it first opens the cache directories to the build's user.
pub(crate) fn launcher_script(disk_cache: bool) -> String {
    let mut steps = vec!["echo \"launcher_start_ts:$(date +%s)\" > /workspace/metrics"];
    if disk_cache {
        steps.push("chmod -R 777 /opt/sdpipelinecache /opt/sdjobcache /opt/sdeventcache");
    }
    steps.push(concat!(
        "if [ ! -f /opt/launcher/launch ]; then ",
        "staging=$(mktemp -d -p /opt/launcher) && cp -a /opt/sd/* \"$staging\" && ",
        "mkdir -p \"$staging/hab\" && cp -a /hab/. \"$staging/hab\" && ",
        "mv -fn \"$staging\"/* /opt/launcher && rm -rf \"$staging\" || true; ",
        "else ls /opt/launcher; fi"
    ));
    steps.push("echo \"launcher_end_ts:$(date +%s)\" >> /workspace/metrics");
    steps.join("; ")
}

/// A deliberately strict reader of POSIX shell words, for tests: it splits the way `sh` does
/// for the subset of the grammar the command lines above use, expands `"$NAME"` from `env`, and
/// refuses (returns `Err`) anything else: any unquoted character the shell would treat
/// specially. A value escaping its quotes therefore either changes the words or is refused.
#[cfg(test)]
pub(crate) fn split_words(
    line: &str,
    env: &std::collections::BTreeMap<&str, &str>,
) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(word) = current.take() {
                    words.push(word);
                }
            }
            '\'' => {
                let word = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let word = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('$' | '`' | '"' | '\\')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some('$') => {
                            let mut name = String::new();
                            while let Some(&c) = chars.peek() {
                                if c.is_ascii_alphanumeric() || c == '_' {
                                    name.push(c);
                                    chars.next();
                                } else {
                                    break;
                                }
                            }
                            let value = env.get(name.as_str()).ok_or_else(|| {
                                format!("unknown or unsupported expansion ${name}")
                            })?;
                            word.push_str(value);
                        }
                        Some('`') => return Err("command substitution".into()),
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => current.get_or_insert_with(String::new).push(c),
                None => return Err("trailing backslash".into()),
            },
            c if c.is_ascii_alphanumeric() || "/._-:=+,@%".contains(c) => {
                current.get_or_insert_with(String::new).push(c);
            }
            other => return Err(format!("unquoted special character {other:?}")),
        }
    }
    if let Some(word) = current.take() {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn args<'a>(token: TokenArg<'a>, api: &'a str, store: &'a str, ui: &'a str) -> RunArgs<'a> {
        RunArgs {
            token,
            api,
            store,
            timeout_minutes: 90,
            build_id: BuildId(987654),
            ui,
            cache: None,
        }
    }

    #[test]
    fn run_command_has_screwdriver_argument_order() {
        let line = run_command(&args(
            TokenArg::Literal("jwt"),
            "https://api",
            "https://store",
            "https://ui",
        ));
        assert_eq!(
            line,
            "/opt/sd/run.sh 'jwt' 'https://api' 'https://store' '90' '987654' 'https://ui'"
        );
    }

    #[test]
    fn token_from_env_is_a_quoted_expansion() {
        let line = run_command(&args(TokenArg::FromEnv("SD_TOKEN"), "a", "s", "u"));
        assert!(
            line.starts_with("/opt/sd/run.sh \"$SD_TOKEN\" 'a'"),
            "{line}"
        );
        let env = BTreeMap::from([("SD_TOKEN", "tok en; rm -rf /")]);
        let words = split_words(&line, &env).unwrap();
        assert_eq!(words[1], "tok en; rm -rf /");
    }

    #[test]
    fn disk_cache_adds_eight_arguments() {
        let mut a = args(TokenArg::Literal("t"), "a", "s", "u");
        a.cache = Some(CacheArgs {
            strategy: "disk",
            compress: true,
            md5check: false,
            max_size_mb: 0,
            max_go_threads: 10000,
        });
        let words = split_words(&run_command(&a), &BTreeMap::new()).unwrap();
        assert_eq!(
            &words[7..],
            [
                "disk",
                "/sdpipelinecache",
                "/sdjobcache",
                "/sdeventcache",
                "true",
                "false",
                "0",
                "10000"
            ]
        );
    }

    #[test]
    fn quotes_survive_quotes() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("a\0b"), "'ab'");
        let words = split_words(&quote("'$(reboot)'`id`\"\\"), &BTreeMap::new()).unwrap();
        assert_eq!(words, ["'$(reboot)'`id`\"\\"]);
    }

    #[test]
    fn the_splitter_refuses_what_it_does_not_understand() {
        let env = BTreeMap::new();
        assert!(split_words("a; b", &env).is_err());
        assert!(split_words("'open", &env).is_err());
        assert!(split_words("$(x)", &env).is_err());
        assert!(split_words("\"$UNSET\"", &env).is_err());
        assert_eq!(split_words("a  'b c'd", &env).unwrap(), ["a", "b cd"]);
    }

    #[test]
    fn launcher_script_copies_only_when_missing_and_chmods_with_disk_cache() {
        let plain = launcher_script(false);
        assert!(plain.contains("if [ ! -f /opt/launcher/launch ]"));
        assert!(plain.contains("mv -fn"));
        assert!(plain.starts_with("echo \"launcher_start_ts:"));
        assert!(plain.ends_with(">> /workspace/metrics"));
        assert!(!plain.contains("chmod"));
        assert!(launcher_script(true).contains("chmod -R 777 /opt/sdpipelinecache"));
    }

    proptest! {
        #[test]
        fn no_value_escapes_its_quotes(
            token in any::<String>(),
            api in any::<String>(),
            store in ".*",
            ui in "[\\PC'\"\\\\$`;&|<>(){}\\n\\t ]*",
            timeout in any::<u64>(),
            id in any::<u64>(),
            strategy in any::<String>(),
        ) {
            let no_nul = |s: &str| s.replace('\0', "");
            for cache in [None, Some(CacheArgs { strategy: &strategy, compress: false, md5check: true, max_size_mb: 7, max_go_threads: 9 })] {
                let a = RunArgs { token: TokenArg::Literal(&token), api: &api, store: &store, timeout_minutes: timeout, build_id: BuildId(id), ui: &ui, cache };
                let words = split_words(&run_command(&a), &BTreeMap::new()).map_err(TestCaseError::fail)?;
                let mut expected = vec![RUN_SH.to_string(), no_nul(&token), no_nul(&api), no_nul(&store), timeout.to_string(), id.to_string(), no_nul(&ui)];
                if cache.is_some() {
                    expected.extend([no_nul(&strategy), PIPELINE_CACHE_DIR.into(), JOB_CACHE_DIR.into(), EVENT_CACHE_DIR.into(), "false".into(), "true".into(), "7".into(), "9".into()]);
                }
                prop_assert_eq!(words, expected);
            }
        }
    }
}
