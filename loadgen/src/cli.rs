//! Command-line parsing and validation: turns flags into a checked run configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::proxy::{self, Sources};
use crate::vocab::{Class, Pipelining, ProxyVersion, SizeDist, TlsMode, CLASSES};

/// SMTP load generator for ringmx: scripted sessions with every reply checked.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringmx-loadgen", version)]
pub struct Args {
    /// Server to load, HOST:PORT (loopback only unless --allow-remote).
    #[arg(long)]
    pub target: String,
    /// Concurrent connections: closed loop runs this many back-to-back session
    /// slots; open loop (--rate) caps sessions in flight at this (default 50
    /// closed, 4096 open).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Open loop: start this many sessions per second on a fixed schedule.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Run length (e.g. 30s, 500ms, 2m). Default 10s when --sessions is absent.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many sessions have been started.
    #[arg(long)]
    pub sessions: Option<u64>,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Traffic mix as class=weight pairs.
    #[arg(long, default_value = "valid=90,typo=3,overlong=3,nonsmtp=2,badseq=1,unimpl=1", value_parser = parse_mix)]
    pub mix: Mix,
    /// Message size (e.g. 1k) or range (512:64k), octets before dot-stuffing.
    #[arg(long, default_value = "1k", value_parser = parse_size_range)]
    pub msg_size: (usize, usize),
    /// How sizes spread over a --msg-size range: log-uniform, or log-normal with the median
    /// at the geometric mean and MIN, MAX at -3, +3 sigma.
    #[arg(long, value_enum, default_value = "uniform")]
    pub msg_size_dist: SizeDist,
    /// Domain of the recipients: valid ones are user0..user149@D, unknown_user's
    /// loadgen-unknown-0..15@D.
    #[arg(long, default_value = "example.com", value_parser = parse_domain)]
    pub rcpt_domain: String,
    /// Domain the relay class sends to, one the server must not accept.
    #[arg(long, default_value = "relay.loadgen.invalid", value_parser = parse_domain)]
    pub relay_domain: String,
    /// slowloris: one octet per this interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub slowloris_interval: Duration,
    /// slowloris: a connection the server has not closed after this is a mismatch.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub slowloris_max: Duration,
    /// Start every connection with a PROXY protocol header (haproxy's v1 text or v2 binary).
    #[arg(long, value_enum)]
    pub proxy: Option<ProxyVersion>,
    /// Networks the PROXY headers' source addresses are drawn from (CIDR list; default
    /// 192.0.2.0/24,198.51.100.0/24,203.0.113.0/24,2001:db8::/48).
    #[arg(long, requires = "proxy", value_parser = proxy::parse_sources)]
    pub proxy_sources: Option<Sources>,
    /// Recipients per message, N or MIN:MAX.
    #[arg(long, default_value = "1", value_parser = parse_rcpts)]
    pub rcpts: (u32, u32),
    /// RFC 2920 pipelining: auto = when the server advertises it.
    #[arg(long, value_enum, default_value = "auto")]
    pub pipelining: Pipelining,
    /// Send messages with RFC 3030 BDAT when the server advertises CHUNKING.
    #[arg(long)]
    pub bdat: bool,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.60 or a,b,c.
    #[arg(long, value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIps>,
    /// Directory for summary.json, *.hgrm, latency.hlog, report.svg and mismatches/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Messages per session for the valid class (1 = one per connection, like smtp-source -d).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub messages_per_session: u32,
    /// Per-step timeout: connect, each reply, the close of a rejected session.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Allow targets and source addresses outside loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Seed for the per-thread random choices (class, variant, sizes).
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Sweep open-loop rates FROM:TO:STEP (sessions/s) until the SLO or error budget breaks.
    #[arg(long, value_parser = parse_sweep, requires = "slo")]
    pub sweep: Option<(f64, f64, f64)>,
    /// Latency objective of the session phase for --sweep, e.g. p99=50ms.
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<Slo>,
    /// Length of each --sweep step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// Before the first --sweep step, run this long at its rate and keep none of it: a fresh
    /// server's first seconds (its pools, spool files and directories being made) are no
    /// point of its capacity curve.
    #[arg(long, value_parser = parse_duration)]
    pub sweep_warmup: Option<Duration>,
    /// Error budget for --sweep, percent of sessions with any error.
    #[arg(long, default_value = "0.1")]
    pub error_budget: f64,
    /// TLS: STARTTLS after the first EHLO (RFC 3207) or implicit TLS from the connect (RFC 8314).
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// PEM file of the CA(s) the server's certificate must chain to (--tls or the tls class).
    #[arg(long, conflicts_with = "tls_insecure")]
    pub tls_ca: Option<PathBuf>,
    /// Do not verify the server's certificate at all.
    #[arg(long)]
    pub tls_insecure: bool,
    /// Server name to send (SNI) and verify the certificate against (default: the target's host).
    #[arg(long)]
    pub tls_sni: Option<String>,
    /// Resume TLS sessions (tickets or session ids) across each thread's connections.
    #[arg(long)]
    pub tls_resume: bool,
    /// Percent of the tls class's sessions that try to resume (all with --tls-resume).
    #[arg(long, default_value = "0", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub tls_resume_share: u32,
}

/// TLS settings of a run (`--tls*`, or the tls class).
#[derive(Debug, Clone)]
pub struct TlsOpts {
    /// `None`: only the tls class's sessions use TLS.
    pub mode: Option<TlsMode>,
    /// `None`: `--tls-insecure`.
    pub ca: Option<PathBuf>,
    pub server_name: String,
    /// Every TLS session resumes (`--tls-resume`).
    pub resume: bool,
    /// Percent of the tls class's sessions that resume (100 with `--tls-resume`).
    pub resume_share: u32,
}

/// The PROXY header every connection starts with (`--proxy`, `--proxy-sources`).
#[derive(Debug, Clone)]
pub struct ProxyOpts {
    pub version: ProxyVersion,
    pub sources: Sources,
}

/// Source addresses to bind before connecting.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceIps(pub Vec<IpAddr>);

/// Relative weights per traffic class, indexed like `CLASSES`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub [u32; CLASSES.len()]);

/// A latency objective: the given percentile of session latency must stay at or under `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    pub percentile: f64,
    pub max: Duration,
}

/// The checked, resolved configuration a run works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: SocketAddr,
    pub target_text: String,
    pub connections: usize,
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub sessions: Option<u64>,
    pub threads: usize,
    pub mix: Mix,
    pub msg_size: (usize, usize),
    pub msg_size_dist: SizeDist,
    pub rcpt_domain: String,
    pub relay_domain: String,
    pub slowloris_interval: Duration,
    pub slowloris_max: Duration,
    pub proxy: Option<ProxyOpts>,
    pub rcpts: (u32, u32),
    pub pipelining: Pipelining,
    pub bdat: bool,
    pub source_ips: Vec<IpAddr>,
    pub out: Option<PathBuf>,
    pub json: bool,
    pub quiet: bool,
    pub messages_per_session: u32,
    pub timeout: Duration,
    pub seed: u64,
    pub tls: Option<TlsOpts>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit {unit:?} in {s:?}")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 7.0 * 86400.0 {
        return Err(format!("duration {s:?} out of range (0, 7d]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("bad rate {s:?}"))?;
    if !(v.is_finite() && v > 0.0 && v <= 10_000_000.0) {
        return Err(format!("rate {s:?} out of range (0, 1e7]"));
    }
    Ok(v)
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix('k') {
        (n, 1024)
    } else if let Some(n) = lower.strip_suffix('m') {
        (n, 1024 * 1024)
    } else {
        (lower.as_str(), 1)
    };
    let v: usize = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    v.checked_mul(mult).ok_or_else(|| format!("size {s:?} too large"))
}

/// Message sizes below this cannot hold the fixed headers; above it memory use gets silly.
const MIN_MSG: usize = 256;
const MAX_MSG: usize = 64 * 1024 * 1024;

pub fn parse_size_range(s: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = match s.split_once(':') {
        Some((a, b)) => (parse_size(a)?, parse_size(b)?),
        None => {
            let v = parse_size(s)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("size range {s:?}: min exceeds max"));
    }
    if lo < MIN_MSG || hi > MAX_MSG {
        return Err(format!("message size {s:?} must be within {MIN_MSG}..=64m"));
    }
    Ok((lo, hi))
}

/// A domain for generated addresses: letters, digits, hyphens and dots only, so that it
/// cannot break the command lines it goes in.
fn parse_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..");
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("bad domain {s:?}"))
    }
}

fn parse_rcpts(s: &str) -> Result<(u32, u32), String> {
    let p = |x: &str| x.trim().parse::<u32>().map_err(|_| format!("bad rcpts {s:?}"));
    let (lo, hi) = match s.split_once(':') {
        Some((a, b)) => (p(a)?, p(b)?),
        None => (p(s)?, p(s)?),
    };
    // RFC 5321 4.5.3.1.8: servers must accept at least 100 recipients.
    if lo == 0 || lo > hi || hi > 100 {
        return Err(format!("rcpts {s:?} must satisfy 1 <= min <= max <= 100"));
    }
    Ok((lo, hi))
}

pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut w = [0u32; CLASSES.len()];
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("mix entry {part:?} is not class=weight"))?;
        let class = Class::from_name(name.trim()).ok_or_else(|| {
            let names: Vec<&str> = CLASSES.iter().map(|c| c.name()).collect();
            format!("unknown class {name:?} (known: {})", names.join(", "))
        })?;
        w[class as usize] = weight
            .trim()
            .parse()
            .map_err(|_| format!("bad weight in {part:?}"))?;
    }
    if w.iter().all(|&x| x == 0) {
        return Err("mix has no class with a weight above 0".into());
    }
    Ok(Mix(w))
}

pub fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b || b - a >= 65536 {
                return Err(format!("bad address range {part:?}"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part:?}"))?);
        }
    }
    if out.is_empty() {
        return Err("empty --source-ips".into());
    }
    Ok(SourceIps(out))
}

fn parse_sweep(s: &str) -> Result<(f64, f64, f64), String> {
    let v: Vec<&str> = s.split(':').collect();
    if v.len() != 3 {
        return Err(format!("sweep {s:?} is not FROM:TO:STEP"));
    }
    let (a, b, c) = (parse_rate(v[0])?, parse_rate(v[1])?, parse_rate(v[2])?);
    if a > b {
        return Err(format!("sweep {s:?}: FROM exceeds TO"));
    }
    if (b - a) / c > 1000.0 {
        return Err(format!("sweep {s:?} has more than 1000 steps"));
    }
    Ok((a, b, c))
}

pub fn parse_slo(s: &str) -> Result<Slo, String> {
    let (p, d) = s
        .split_once('=')
        .ok_or_else(|| format!("slo {s:?} is not pNN=DURATION"))?;
    let percentile: f64 = p
        .trim()
        .strip_prefix('p')
        .ok_or_else(|| format!("slo {s:?}: percentile must start with p"))?
        .parse()
        .map_err(|_| format!("bad percentile in {s:?}"))?;
    if !(percentile > 0.0 && percentile <= 100.0) {
        return Err(format!("percentile in {s:?} must be in (0, 100]"));
    }
    Ok(Slo {
        percentile,
        max: parse_duration(d)?,
    })
}

/// Resolve HOST:PORT and refuse anything outside loopback unless explicitly allowed,
/// so a typo can never point a load test at someone else's server.
pub fn resolve_target(target: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target:?} resolves to nothing"))?;
    if !allow_remote && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing target {target} ({addr}): not loopback; pass --allow-remote to load a remote host"
        ));
    }
    Ok(addr)
}

impl Args {
    pub fn into_config(self) -> Result<Config, String> {
        let target = resolve_target(&self.target, self.allow_remote)?;
        let source_ips = self.source_ips.clone().map(|s| s.0).unwrap_or_default();
        for ip in &source_ips {
            if !self.allow_remote && !ip.is_loopback() {
                return Err(format!("refusing source address {ip}: not loopback"));
            }
            if ip.is_ipv4() != target.is_ipv4() {
                return Err(format!("source address {ip} is not the target's family"));
            }
        }
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 256);
        let connections = self
            .connections
            .unwrap_or(if self.rate.is_some() { 4096 } else { 50 });
        if connections == 0 || connections > 1_000_000 {
            return Err("--connections must be in 1..=1000000".into());
        }
        let duration = match (self.duration, self.sessions) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        };
        if self.sessions == Some(0) {
            return Err("--sessions must be at least 1".into());
        }
        let tls = self.tls_opts()?;
        if self.mix.0[Class::Starttls as usize] > 0 && self.tls != Some(TlsMode::Starttls) {
            return Err("the starttls class needs --tls starttls".into());
        }
        let proxy = self.proxy.map(|version| ProxyOpts {
            version,
            sources: self.proxy_sources.clone().unwrap_or_else(|| {
                proxy::parse_sources(proxy::DEFAULT_SOURCES).expect("the default sources parse")
            }),
        });
        Ok(Config {
            target,
            target_text: self.target,
            connections,
            rate: self.rate,
            duration,
            sessions: self.sessions,
            threads: threads.min(connections),
            mix: self.mix,
            msg_size: self.msg_size,
            msg_size_dist: self.msg_size_dist,
            rcpt_domain: self.rcpt_domain,
            relay_domain: self.relay_domain,
            slowloris_interval: self.slowloris_interval,
            slowloris_max: self.slowloris_max,
            proxy,
            rcpts: self.rcpts,
            pipelining: self.pipelining,
            bdat: self.bdat,
            source_ips,
            out: self.out,
            json: self.json,
            quiet: self.quiet,
            messages_per_session: self.messages_per_session,
            timeout: self.timeout,
            seed: self.seed,
            tls,
        })
    }

    /// The `--tls*` flags checked: TLS (`--tls` or the tls class) needs a way to judge the
    /// certificate, and the other flags need TLS.
    fn tls_opts(&self) -> Result<Option<TlsOpts>, String> {
        let class = self.mix.0[Class::Tls as usize] > 0;
        if self.tls.is_none() && !class {
            let used = [
                (self.tls_ca.is_some(), "--tls-ca"),
                (self.tls_insecure, "--tls-insecure"),
                (self.tls_sni.is_some(), "--tls-sni"),
                (self.tls_resume, "--tls-resume"),
                (self.tls_resume_share > 0, "--tls-resume-share"),
            ];
            if let Some((_, flag)) = used.iter().find(|u| u.0) {
                return Err(format!("{flag} needs --tls or the tls class in --mix"));
            }
            return Ok(None);
        }
        if self.tls_ca.is_none() && !self.tls_insecure {
            let what = if self.tls.is_some() {
                "--tls"
            } else {
                "the tls class"
            };
            return Err(format!("{what} needs --tls-ca FILE or --tls-insecure"));
        }
        let host = match self.target.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => self.target.as_str(),
        };
        Ok(Some(TlsOpts {
            mode: self.tls,
            ca: self.tls_ca.clone(),
            server_name: self.tls_sni.clone().unwrap_or_else(|| host.to_string()),
            resume: self.tls_resume,
            resume_share: if self.tls_resume {
                100
            } else {
                self.tls_resume_share
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_range("1k").unwrap(), (1024, 1024));
        assert_eq!(parse_size_range("512:64k").unwrap(), (512, 65536));
        assert_eq!(parse_size_range("1M").unwrap(), (1 << 20, 1 << 20));
        assert!(parse_size_range("64k:512").is_err());
        assert!(parse_size_range("10").is_err(), "too small for headers");
        assert!(parse_size_range("abc").is_err());
    }

    #[test]
    fn rcpts() {
        assert_eq!(parse_rcpts("1:3").unwrap(), (1, 3));
        assert_eq!(parse_rcpts("5").unwrap(), (5, 5));
        assert!(parse_rcpts("0").is_err());
        assert!(parse_rcpts("3:1").is_err());
        assert!(parse_rcpts("1:101").is_err());
    }

    #[test]
    fn mix() {
        let m = parse_mix("valid=90,typo=3,overlong=3,nonsmtp=2,badseq=1,unimpl=1").unwrap();
        assert_eq!(m.0[Class::Valid as usize], 90);
        assert_eq!(m.0[Class::Nonsmtp as usize], 2);
        assert_eq!(m.0[Class::Badparam as usize], 0);
        let m = parse_mix("badparam=1").unwrap();
        assert_eq!(m.0.iter().sum::<u32>(), 1);
        assert!(parse_mix("valid=1,bogus=2").is_err());
        assert!(parse_mix("valid").is_err());
        assert!(parse_mix("valid=0").is_err());
        assert!(parse_mix("valid=x").is_err());
    }

    #[test]
    fn source_ips() {
        let v = parse_source_ips("127.0.0.2-127.0.0.60").unwrap().0;
        assert_eq!(v.len(), 59);
        assert_eq!(v[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[58], "127.0.0.60".parse::<IpAddr>().unwrap());
        let v = parse_source_ips("127.0.0.2,::1").unwrap().0;
        assert_eq!(v.len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("nope").is_err());
    }

    #[test]
    fn sweep_and_slo() {
        assert_eq!(parse_sweep("100:500:100").unwrap(), (100.0, 500.0, 100.0));
        assert!(parse_sweep("500:100:100").is_err());
        assert!(parse_sweep("1:2").is_err());
        let s = parse_slo("p99=50ms").unwrap();
        assert_eq!(s.percentile, 99.0);
        assert_eq!(s.max, Duration::from_millis(50));
        assert!(parse_slo("99=50ms").is_err());
        assert!(parse_slo("p101=1s").is_err());
    }

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut v = vec!["ringmx-loadgen"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).map_err(|e| e.to_string())?.into_config()
    }

    #[test]
    fn loopback_only_unless_allowed() {
        assert!(args(&["--target", "127.0.0.1:25"]).is_ok());
        assert!(args(&["--target", "127.9.8.7:25"]).is_ok());
        assert!(args(&["--target", "[::1]:25"]).is_ok());
        assert!(args(&["--target", "localhost:25"]).is_ok());
        let e = args(&["--target", "192.0.2.1:25"]).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        assert!(args(&["--target", "10.0.0.1:25"]).is_err());
        // Allowed only by the explicit flag; resolution needs no network for an IP literal.
        assert!(args(&["--target", "192.0.2.1:25", "--allow-remote"]).is_ok());
        let e = args(&["--target", "127.0.0.1:25", "--source-ips", "192.0.2.5"]).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        assert!(args(&["--target", "127.0.0.1:25", "--source-ips", "::1"]).is_err());
    }

    #[test]
    fn defaults_and_modes() {
        let c = args(&["--target", "127.0.0.1:25"]).unwrap();
        assert_eq!(c.connections, 50);
        assert_eq!(c.duration, Some(Duration::from_secs(10)));
        assert_eq!(c.messages_per_session, 1);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = args(&["--target", "127.0.0.1:25", "--rate", "100", "--sessions", "5"]).unwrap();
        assert_eq!(c.rate, Some(100.0));
        assert_eq!(c.duration, None);
        assert_eq!(c.sessions, Some(5));
        assert_eq!(c.connections, 4096);
        assert!(args(&["--target", "127.0.0.1:25", "--sessions", "0"]).is_err());
        assert!(args(&["--target", "127.0.0.1:25", "--sweep", "1:2:1"]).is_err());
        assert!(args(&["--target", "127.0.0.1:25", "--rate", "-1"]).is_err());
        assert_eq!(c.rcpt_domain, "example.com");
        assert_eq!(c.msg_size_dist, SizeDist::Uniform);
        assert_eq!(c.slowloris_interval, Duration::from_secs(1));
        assert_eq!(c.slowloris_max, Duration::from_secs(900));
        assert!(c.proxy.is_none() && c.tls.is_none());
    }

    #[test]
    fn traffic_flags() {
        let c = args(&[
            "--target",
            "127.0.0.1:25",
            "--proxy",
            "v2",
            "--rcpt-domain",
            "example.org",
            "--relay-domain",
            "elsewhere.test",
            "--msg-size",
            "1k:2m",
            "--msg-size-dist",
            "lognormal",
        ])
        .unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.version, ProxyVersion::V2);
        assert_eq!(p.sources.0.len(), 4, "the default spread");
        assert_eq!(
            (c.rcpt_domain.as_str(), c.relay_domain.as_str()),
            ("example.org", "elsewhere.test")
        );
        assert_eq!(c.msg_size_dist, SizeDist::Lognormal);
        let c = args(&[
            "--target",
            "127.0.0.1:25",
            "--proxy",
            "v1",
            "--proxy-sources",
            "203.0.113.0/28",
        ]);
        assert_eq!(c.unwrap().proxy.unwrap().sources.0.len(), 1);
        assert!(args(&["--target", "127.0.0.1:25", "--proxy-sources", "203.0.113.0/28"]).is_err());
        assert!(args(&["--target", "127.0.0.1:25", "--rcpt-domain", "a b"]).is_err());
        assert!(args(&["--target", "127.0.0.1:25", "--rcpt-domain", "x>y"]).is_err());
    }

    #[test]
    fn tls_class_needs_a_certificate_check_not_tls_mode() {
        let base = ["--target", "127.0.0.1:25", "--mix", "valid=1,tls=1"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            args(&v)
        };
        let e = with(&[]).unwrap_err();
        assert!(
            e.contains("the tls class needs --tls-ca FILE or --tls-insecure"),
            "{e}"
        );
        let t = with(&["--tls-insecure", "--tls-resume-share", "25"])
            .unwrap()
            .tls
            .unwrap();
        assert_eq!((t.mode, t.resume, t.resume_share), (None, false, 25));
        let t = with(&["--tls-insecure", "--tls-resume"]).unwrap().tls.unwrap();
        assert_eq!(t.resume_share, 100);
        assert!(with(&["--tls-insecure", "--tls-resume-share", "101"]).is_err());
        let e = args(&["--target", "127.0.0.1:25", "--tls-insecure"]).unwrap_err();
        assert!(e.contains("--tls-insecure needs --tls or the tls class"), "{e}");
        assert!(args(&["--target", "127.0.0.1:25", "--tls-resume-share", "5"]).is_err());
    }
}
