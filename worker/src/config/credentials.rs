//! Credentials: the broker URI and a cluster's bearer token, assembled from configuration.
//!
//! Owns how the Screwdriver form of the broker address (`protocol`, `username`, `password`,
//! `host`, `port`, `vhost`) becomes one AMQP URI, where passwords and tokens are read from
//! (the file, a mounted Secret file, the environment), and how a URL is shown with its password
//! masked. It never puts a secret value into an error message, a `Debug` string or a log line.

use std::str::FromStr;

use serde_json::Value;

use super::issue::ConfigIssue;
use super::model::{KubernetesOptions, RabbitSettings};
use super::schema::fold;
use crate::secret::{MASK, Secret};

/// `connectOptions` key of the heartbeat (amqp-connection-manager's name).
const HEARTBEAT_KEY: &str = "heartbeatIntervalInSeconds";
/// The original's heartbeat when `connectOptions` does not set one.
const DEFAULT_HEARTBEAT_SECS: u64 = 20;

impl RabbitSettings {
    /// The AMQP URI to connect with: `url` when set, otherwise
    /// `protocol://username:password@host:port/vhost` with user name and password
    /// percent-encoded and the vhost encoded as one path segment (`/` is `%2f`, Screwdriver's
    /// `/screwdriver` is `screwdriver`). The password comes from `password_file` when set.
    /// `heartbeat` (from `connectOptions.heartbeatIntervalInSeconds`, default 20) is added to the
    /// query unless the URI already has one.
    pub fn amqp_uri(&self) -> Result<Secret, ConfigIssue> {
        let (uri, at) = match self.explicit_url() {
            Some(url) => (url.to_string(), "rabbitmq.url"),
            None => (self.assemble(&self.password_value()?)?, "rabbitmq"),
        };
        let uri = with_heartbeat(&uri, self.heartbeat()?);
        check_amqp_uri(&uri).map_err(|m| ConfigIssue::new(at, m))?;
        Ok(Secret::new(uri))
    }

    /// `url`, when it is set to something.
    pub(crate) fn explicit_url(&self) -> Option<&str> {
        self.url
            .as_ref()
            .map(Secret::expose)
            .filter(|u| !u.trim().is_empty())
    }

    /// `amqp` or `amqps`, from `url` when set, else from `protocol` (lowercased).
    pub(crate) fn scheme(&self) -> String {
        match self.explicit_url() {
            Some(url) => url
                .split_once("://")
                .map_or("", |(s, _)| s)
                .to_ascii_lowercase(),
            None => self.protocol.trim().to_ascii_lowercase(),
        }
    }

    fn password_value(&self) -> Result<String, ConfigIssue> {
        match self.password_file.as_deref().filter(|p| !p.is_empty()) {
            // Files written by `echo` end with a newline that is not part of the password.
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    ConfigIssue::new(
                        "rabbitmq.password_file",
                        format!("cannot read {path:?}: {e}"),
                    )
                }),
            None => Ok(self.password.expose().to_string()),
        }
    }

    /// The Screwdriver form as a URI, with this password.
    pub(crate) fn assemble(&self, password: &str) -> Result<String, ConfigIssue> {
        let protocol = self.protocol.trim().to_ascii_lowercase();
        if protocol != "amqp" && protocol != "amqps" {
            return Err(ConfigIssue::new(
                "rabbitmq.protocol",
                format!("{:?} is not amqp or amqps", self.protocol),
            ));
        }
        if self.username.is_empty() {
            // lapin would silently connect as `guest`.
            return Err(ConfigIssue::new(
                "rabbitmq.username",
                "is empty (set rabbitmq.url or rabbitmq.username)",
            ));
        }
        let host = self.host.trim();
        if host.is_empty() {
            return Err(ConfigIssue::new(
                "rabbitmq.host",
                "is empty (set rabbitmq.url or rabbitmq.host)",
            ));
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let vhost = match self.vhost.trim() {
            "" | "/" => "/",
            v => v.strip_prefix('/').unwrap_or(v),
        };
        Ok(format!(
            "{protocol}://{}:{}@{host}:{}/{}",
            percent_encode(&self.username),
            percent_encode(password),
            self.port,
            percent_encode(vhost),
        ))
    }

    /// The heartbeat in seconds from `connectOptions` (default 20).
    pub(crate) fn heartbeat(&self) -> Result<u64, ConfigIssue> {
        let key = fold(HEARTBEAT_KEY);
        let Some((name, value)) = self.connect_options.iter().find(|(k, _)| fold(k) == key) else {
            return Ok(DEFAULT_HEARTBEAT_SECS);
        };
        let parsed = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| {
            ConfigIssue::new(
                format!("rabbitmq.connect_options.{name}"),
                format!("expected a whole number of seconds, got {value}"),
            )
        })
    }
}

impl KubernetesOptions {
    /// The bearer token for the cluster: `token`, or the content of `token_file` (read on each
    /// call, so a rotated projected token is picked up), or `None` when neither is set (then
    /// the kubeconfig or the in-cluster service account decides). Issue paths are relative to the
    /// executor block (`options.kubernetes.token_file`); see [`ConfigIssue::under`].
    pub fn bearer_token(&self) -> Result<Option<Secret>, ConfigIssue> {
        if !self.token.is_empty() {
            return Ok(Some(self.token.clone()));
        }
        if self.token_file.is_empty() {
            return Ok(None);
        }
        let path = &self.token_file;
        let raw = std::fs::read_to_string(path).map_err(|e| {
            ConfigIssue::new(
                "options.kubernetes.token_file",
                format!("cannot read {path:?}: {e}"),
            )
        })?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(ConfigIssue::new(
                "options.kubernetes.token_file",
                format!("{path:?} is empty"),
            ));
        }
        Ok(Some(Secret::new(token)))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (lowercase hex, as RabbitMQ's
/// documentation writes `%2f`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// `uri` with `heartbeat=<secs>` in its query, unless the query already has a heartbeat.
fn with_heartbeat(uri: &str, secs: u64) -> String {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("heartbeat"))
    {
        return uri.to_string();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}heartbeat={secs}")
}

/// Whether lapin will accept `uri`; the error shows the URI with its password masked.
pub(crate) fn check_amqp_uri(uri: &str) -> Result<(), String> {
    match lapin::uri::AMQPUri::from_str(uri) {
        Ok(_) => Ok(()),
        Err(e) => {
            let masked = mask_url(uri);
            // The parser may quote the input; never let the password through.
            let e = e.replace(uri, &masked);
            let e = match password_of(uri) {
                Some(p) if p.len() >= 3 => e.replace(p, MASK),
                _ => e,
            };
            Err(format!("not a valid AMQP URI ({masked}): {e}"))
        }
    }
}

/// The password part of a URL's userinfo, as written.
fn password_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, p)| p)
}

/// A URL with the password of its userinfo replaced by `***`
/// (`amqp://guest:***@host:5672/%2f`); anything else is returned unchanged.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}{tail}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::io::Write;

    fn rabbit() -> RabbitSettings {
        Settings::default().rabbitmq
    }

    #[test]
    fn the_screwdriver_form_is_encoded_into_one_uri() {
        let mut r = rabbit();
        r.username = "ci user".into();
        r.password = Secret::new("p@ss/w%rd:x");
        r.host = "rabbit.example".into();
        r.vhost = "/screwdriver".into();
        assert_eq!(
            r.amqp_uri().unwrap().expose(),
            "amqp://ci%20user:p%40ss%2fw%25rd%3ax@rabbit.example:5672/screwdriver?heartbeat=20"
        );
        let parsed: lapin::uri::AMQPUri = r.amqp_uri().unwrap().expose().parse().unwrap();
        assert_eq!(parsed.authority.userinfo.password, "p@ss/w%rd:x");
        assert_eq!(parsed.authority.userinfo.username, "ci user");
        assert_eq!(parsed.vhost, "screwdriver");
    }

    #[test]
    fn the_root_vhost_is_percent_encoded_and_ipv6_hosts_are_bracketed() {
        let mut r = rabbit();
        r.vhost = "/".into();
        r.host = "::1".into();
        r.protocol = "AMQPS".into();
        r.port = 5671;
        let uri = r.amqp_uri().unwrap();
        assert_eq!(
            uri.expose(),
            "amqps://guest:guest@[::1]:5671/%2f?heartbeat=20"
        );
        let parsed: lapin::uri::AMQPUri = uri.expose().parse().unwrap();
        assert_eq!(parsed.vhost, "/");
    }

    #[test]
    fn an_explicit_url_wins_and_keeps_its_own_heartbeat() {
        let mut r = rabbit();
        r.url = Some(Secret::new("amqp://u:p@h:5672/%2f?heartbeat=5"));
        assert_eq!(
            r.amqp_uri().unwrap().expose(),
            "amqp://u:p@h:5672/%2f?heartbeat=5"
        );
        r.url = Some(Secret::new("amqp://u:p@h:5672/%2f?frame_max=8192"));
        assert_eq!(
            r.amqp_uri().unwrap().expose(),
            "amqp://u:p@h:5672/%2f?frame_max=8192&heartbeat=20"
        );
        r.url = Some(Secret::new("  "));
        assert!(
            r.amqp_uri()
                .unwrap()
                .expose()
                .starts_with("amqp://guest:guest@127.0.0.1")
        );
    }

    #[test]
    fn the_heartbeat_comes_from_connect_options_as_number_or_string() {
        let mut r = rabbit();
        r.connect_options
            .insert("heartbeatIntervalInSeconds".into(), Value::from(7));
        assert!(r.amqp_uri().unwrap().expose().ends_with("?heartbeat=7"));
        r.connect_options
            .insert("heartbeatIntervalInSeconds".into(), Value::from("9"));
        assert!(r.amqp_uri().unwrap().expose().ends_with("?heartbeat=9"));
        r.connect_options
            .insert("heartbeatIntervalInSeconds".into(), Value::from("soon"));
        let issue = r.amqp_uri().unwrap_err();
        assert_eq!(
            issue.path,
            "rabbitmq.connect_options.heartbeatIntervalInSeconds"
        );
    }

    #[test]
    fn the_password_file_is_read_without_its_trailing_newline() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "from-file@1").unwrap();
        let mut r = rabbit();
        r.password = Secret::new("ignored");
        r.password_file = Some(file.path().display().to_string());
        assert_eq!(
            r.amqp_uri().unwrap().expose(),
            "amqp://guest:from-file%401@127.0.0.1:5672/%2f?heartbeat=20"
        );
        r.password_file = Some("/nonexistent/bcw-password".into());
        assert_eq!(r.amqp_uri().unwrap_err().path, "rabbitmq.password_file");
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_its_password() {
        let mut r = rabbit();
        r.url = Some(Secret::new("amqp://u:hunter22@h:notaport/%2f"));
        let issue = r.amqp_uri().unwrap_err();
        assert_eq!(issue.path, "rabbitmq.url");
        assert!(!issue.message.contains("hunter22"), "{issue}");
        assert!(issue.message.contains("amqp://u:***@h:notaport"), "{issue}");
        r.url = Some(Secret::new("http://u:hunter22@h/"));
        assert!(!r.amqp_uri().unwrap_err().message.contains("hunter22"));
    }

    #[test]
    fn a_protocol_other_than_amqp_is_refused() {
        let mut r = rabbit();
        r.protocol = "http".into();
        assert_eq!(r.amqp_uri().unwrap_err().path, "rabbitmq.protocol");
    }

    #[test]
    fn bearer_tokens_come_from_the_value_or_the_file() {
        let mut k = KubernetesOptions::default();
        assert_eq!(k.bearer_token().unwrap(), None);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  file-token  ").unwrap();
        k.token_file = file.path().display().to_string();
        assert_eq!(k.bearer_token().unwrap().unwrap().expose(), "file-token");
        k.token = Secret::new("inline");
        assert_eq!(k.bearer_token().unwrap().unwrap().expose(), "inline");
        k.token = Secret::default();
        k.token_file = "/nonexistent/bcw-token".into();
        let issue = k.bearer_token().unwrap_err().under("executor.k8s");
        assert_eq!(issue.path, "executor.k8s.options.kubernetes.token_file");
    }

    #[test]
    fn urls_are_masked_only_where_they_carry_a_password() {
        assert_eq!(
            mask_url("amqp://guest:guest@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            mask_url("amqp://a:b@c@host/x?y=z@"),
            "amqp://a:***@host/x?y=z@"
        );
        assert_eq!(mask_url("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(mask_url("https://host/a@b"), "https://host/a@b");
        assert_eq!(mask_url("not a url"), "not a url");
    }

    proptest::proptest! {
        /// Whatever the user name, password and vhost, lapin reads back exactly those values,
        /// and the masked form hides the password and nothing else.
        #[test]
        fn any_credentials_survive_the_uri_and_only_the_password_is_masked(
            username in "\\PC{1,16}",
            password in "\\PC{1,16}",
            vhost in "/?[a-z/%@:]{0,8}",
        ) {
            let mut r = rabbit();
            r.username = username.clone();
            r.password = Secret::new(password.clone());
            r.vhost = vhost.clone();
            let uri = r.amqp_uri().unwrap();
            let parsed: lapin::uri::AMQPUri = uri.expose().parse().unwrap();
            let expected_vhost = match vhost.as_str() {
                "" | "/" => "/",
                v => v.strip_prefix('/').unwrap_or(v),
            };
            proptest::prop_assert_eq!(&parsed.authority.userinfo.username, &username);
            proptest::prop_assert_eq!(&parsed.authority.userinfo.password, &password);
            proptest::prop_assert_eq!(parsed.vhost.as_str(), expected_vhost);
            let masked: lapin::uri::AMQPUri = mask_url(uri.expose()).parse().unwrap();
            proptest::prop_assert_eq!(masked.authority.userinfo.password.as_str(), MASK);
            proptest::prop_assert_eq!(masked.authority.userinfo.username, username);
            proptest::prop_assert_eq!(masked.vhost, parsed.vhost);
        }
    }

    #[test]
    fn percent_encoding_leaves_only_unreserved_characters() {
        assert_eq!(percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(percent_encode("@/%: é"), "%40%2f%25%3a%20%c3%a9");
    }
}
