"""The load generator's side of a run: what the ringmx-loadgen binary given offers, and how the
connections split into its processes (direct and through HAProxy).
"""

import re
import subprocess
from dataclasses import dataclass


def loadgen_features(loadgen):
    """What this ringmx-loadgen offers: its classes (from the error naming the known ones) and
    the flags of its --help. The harness uses the new classes and flags when present."""
    help_text = subprocess.run([loadgen, "--help"], capture_output=True, text=True, timeout=30).stdout
    probe = subprocess.run(
        [loadgen, "--target", "127.0.0.1:1", "--mix", "soak-probe=1", "--sessions", "1"],
        capture_output=True, text=True, timeout=30)
    m = re.search(r"known: ([^)]*)\)", probe.stderr)
    classes = {c.strip() for c in m.group(1).split(",")} if m else {"valid"}
    return {
        "classes": classes,
        "proxy": "--proxy" in help_text,
        "proxy_sources": "--proxy-sources" in help_text,
        "rcpt_domain": "--rcpt-domain" in help_text,
        "size_dist": "--msg-size-dist" in help_text,
    }


@dataclass
class Stream:
    """One ringmx-loadgen process."""
    name: str
    target: str
    connections: int
    mix: str
    source_ips: str
    extra: list


def split_connections(total, fitted):
    """(direct, through HAProxy, HAProxy's server maxconn or None). Half and half when ringmx
    fits them all. When its descriptor budget fits fewer (max_connections lowered), ringmx
    gets as many direct connections as HAProxy may pass on, together 90% of what it fits (a
    closed loop's next connection can arrive before ringmx has counted the last one closed,
    and a refusal is a 421 to the client), and HAProxy holds the rest of its clients in its
    queue: the clients still have `total` connections open, and ringmx's load is half
    through HAProxy."""
    if fitted is None or fitted >= total + total // 10:
        return total - total // 2, total // 2, None
    each = int(fitted * 0.9) // 2
    return each, total - each, each


def plan_streams(features, split, ports, ca):
    """Direct and through HAProxy. With the load generator's tls class and --proxy, each is
    one process with the whole mix and the direct one sends PROXY v2 headers of outside clients
    to the PROXY listener; without them, STARTTLS is two more processes (--tls starttls, a fifth
    of each side's connections) and the direct side goes to a plain listener (its clients,
    127.0.2.x, are outside relay_networks all the same)."""
    full_mix = [("valid", 60), ("tls", 20), ("typo", 5), ("unknown_user", 5), ("relay", 5),
                ("nonsmtp", 5), ("slowloris", 5)]
    have = features["classes"]
    direct_n, ha_n, _ = split
    ha = "127.0.0.1:%d" % ports["haproxy"]
    common = []
    if features["size_dist"]:
        common += ["--msg-size-dist", "lognormal"]
    if features["rcpt_domain"]:
        common += ["--rcpt-domain", "example.com"]
    if "tls" in have:
        mix = ",".join("%s=%d" % (c, w) for c, w in full_mix if c in have)
        tls = ["--tls-ca", ca]
        streams = [Stream("haproxy", ha, ha_n, mix, "127.0.1.1-127.0.1.250", common + tls)]
        if features["proxy"]:
            direct = ["--proxy", "v2"]
            if features["proxy_sources"]:
                # IPv4 /24s and an IPv6 /48: a /64 is one client to ringmx (client_ipv6_prefix),
                # so the v6 share must spread over many /64s to stay under the per-client limit.
                direct += ["--proxy-sources",
                           "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24,2001:db8::/48"]
            streams.append(Stream("direct", "127.0.0.1:%d" % ports["proxy"], direct_n, mix,
                                  "127.0.2.1-127.0.2.250", common + tls + direct))
        else:
            streams.append(Stream("direct", "127.0.0.1:%d" % ports["plain"], direct_n, mix,
                                  "127.0.2.1-127.0.2.250", common + tls))
        return streams
    plain = ",".join("%s=%d" % (c, w) for c, w in full_mix if c in have and c != "tls")
    starttls = ["--tls", "starttls", "--tls-ca", ca]
    return [
        Stream("haproxy", ha, ha_n - ha_n // 5, plain, "127.0.1.1-127.0.1.250", common),
        Stream("direct", "127.0.0.1:%d" % ports["plain"], direct_n - direct_n // 5, plain,
               "127.0.2.1-127.0.2.250", common),
        Stream("haproxy-tls", ha, ha_n // 5, "valid=1", "127.0.3.1-127.0.3.250", common + starttls),
        Stream("direct-tls", "127.0.0.1:%d" % ports["plain"], direct_n // 5, "valid=1",
               "127.0.4.1-127.0.4.250", common + starttls),
    ]
