//! What the Secret and the APIService should hold, decided from what they hold now and the
//! time: the policy, apart from talking to the cluster or writing files (`sync` does that).
//!
//! Invariants of [`reconcile()`]'s result, for any input (missing, stale or garbage data):
//! the serving certificate verifies for every configured name against the CA, matches its
//! key and has more than a third of its lifetime left; the CA has more than a third of its
//! lifetime left; the bundle holds that CA first and then only earlier CAs not yet
//! expired, each once. What is still good is kept as it was ([`Change::None`]), so a round
//! on a good Secret writes nothing. A new CA always comes with a new serving certificate.
//! No I/O: new keys come from the system's random source, and the reasons are logged.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;

use super::pki::{check_cert, issue_cert, new_ca, parse_ca, parse_validity, pem, pem_certs, unix};
use super::{
    SelfCertConfig, SelfCertError, CA_BUNDLE_KEY, CA_CERT_KEY, CA_KEY_KEY, TLS_CERT_KEY,
    TLS_KEY_KEY,
};

/// What [`reconcile`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The Secret was good as it was.
    None,
    /// A new serving certificate from the existing CA.
    NewCert { reason: String },
    /// A new CA and serving certificate.
    NewCa { reason: String },
    /// Only expired CAs were dropped from the bundle.
    PrunedBundle,
}

/// The Secret's contents, as PEM text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub ca_bundle_pem: String,
}

impl Material {
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (TLS_CERT_KEY, &self.cert_pem),
            (TLS_KEY_KEY, &self.key_pem),
            (CA_CERT_KEY, &self.ca_cert_pem),
            (CA_KEY_KEY, &self.ca_key_pem),
            (CA_BUNDLE_KEY, &self.ca_bundle_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

/// Decides, from the Secret's current data (key → PEM text; empty when there is no
/// Secret), what the Secret should hold as of `now`. Pure: no I/O.
pub fn reconcile(
    data: &BTreeMap<String, String>,
    cfg: &SelfCertConfig,
    now: SystemTime,
) -> Result<(Material, Change), SelfCertError> {
    let now_s = unix(now);
    let get = |k: &str| data.get(k).map(String::as_str).unwrap_or("");
    let old_bundle = pem_certs(get(CA_BUNDLE_KEY));

    // The CA: reuse it while it is sound and has more than a third of its life left.
    let ca = match parse_ca(get(CA_CERT_KEY), get(CA_KEY_KEY)) {
        Err(why) => Err(why),
        Ok(ca) if !ca.fresh(now_s) => Err(format!(
            "the CA expires at {} (less than a third of its lifetime left)",
            ca.not_after
        )),
        Ok(ca) => Ok(ca),
    };
    let (ca, mut change) = match ca {
        Ok(ca) => (ca, Change::None),
        Err(reason) => {
            if !data.is_empty() {
                tracing::info!(%reason, "issuing a new CA");
            }
            let reason = if data.is_empty() {
                "no Secret yet".to_string()
            } else {
                reason
            };
            (new_ca(cfg, now)?, Change::NewCa { reason })
        }
    };

    // The serving certificate: reuse it while it verifies for every name against this CA,
    // matches its key and has more than a third of its life left.
    let cert = if matches!(change, Change::NewCa { .. }) {
        None
    } else {
        match check_cert(get(TLS_CERT_KEY), get(TLS_KEY_KEY), &ca, cfg, now) {
            Ok(()) => Some((get(TLS_CERT_KEY).to_string(), get(TLS_KEY_KEY).to_string())),
            Err(reason) => {
                tracing::info!(%reason, "issuing a new serving certificate");
                change = Change::NewCert { reason };
                None
            }
        }
    };
    let (cert_pem, key_pem) = match cert {
        Some(pair) => pair,
        None => {
            let (cert_pem, key_pem) = issue_cert(&ca, cfg, now)?;
            check_cert(&cert_pem, &key_pem, &ca, cfg, now).map_err(SelfCertError::SelfCheck)?;
            (cert_pem, key_pem)
        }
    };

    // The bundle: this CA first, then earlier ones (from the old bundle, and the old CA
    // itself) that have not expired.
    let previous = pem_certs(get(CA_CERT_KEY))
        .into_iter()
        .chain(old_bundle.clone());
    let bundle = next_bundle(&ca.der, previous, now_s);
    let ca_bundle_pem = bundle
        .iter()
        .map(|d| pem("CERTIFICATE", d))
        .collect::<String>();
    if change == Change::None && bundle != old_bundle {
        change = Change::PrunedBundle;
    }

    Ok((
        Material {
            cert_pem,
            key_pem,
            ca_cert_pem: ca.cert_pem.clone(),
            ca_key_pem: ca.key_pem.clone(),
            ca_bundle_pem,
        },
        change,
    ))
}

/// The CA bundle to publish: `current` (DER) first, then each of `previous` (DER, in
/// order) that is not `current`, not already in, parses and has not expired at `now_s`
/// (Unix seconds).
fn next_bundle(
    current: &[u8],
    previous: impl IntoIterator<Item = Vec<u8>>,
    now_s: i64,
) -> Vec<Vec<u8>> {
    let mut bundle: Vec<Vec<u8>> = vec![current.to_vec()];
    for der in previous {
        let alive = parse_validity(&der).is_some_and(|(_, not_after)| not_after > now_s);
        if alive && !bundle.contains(&der) {
            bundle.push(der);
        }
    }
    bundle
}

/// Whether the APIService's spec must be patched to trust `bundle`: its caBundle is not
/// exactly `bundle`, or it skips verification (`insecureSkipTLSVerify`, which the patch
/// clears).
pub(super) fn ca_bundle_needs_patch(
    current: Option<&[u8]>,
    insecure_skip_tls_verify: Option<bool>,
    bundle: &[u8],
) -> bool {
    current != Some(bundle) || insecure_skip_tls_verify == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selfcert::pki::verify_serving_cert;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cfg() -> SelfCertConfig {
        SelfCertConfig::new("/nonexistent")
    }

    fn data_of(m: &Material) -> BTreeMap<String, String> {
        m.to_data()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    fn not_after(pem_text: &str) -> i64 {
        parse_validity(&pem_certs(pem_text)[0]).unwrap().1
    }

    #[test]
    fn fresh_secret_gets_a_ca_and_a_certificate_for_the_service() {
        let now = SystemTime::now();
        let (m, change) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
        assert_eq!(pem_certs(&m.ca_bundle_pem), pem_certs(&m.ca_cert_pem));
        for name in [
            "coredump-apiserver.coredump-system.svc",
            "coredump-apiserver.coredump-system",
            "coredump-apiserver",
        ] {
            verify_serving_cert(m.ca_bundle_pem.as_bytes(), m.cert_pem.as_bytes(), name, now)
                .unwrap();
        }
        // Not for other names, and not trusted by another CA.
        assert!(verify_serving_cert(
            m.ca_bundle_pem.as_bytes(),
            m.cert_pem.as_bytes(),
            "other.coredump-system.svc",
            now
        )
        .is_err());
        let (other, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        assert!(verify_serving_cert(
            other.ca_bundle_pem.as_bytes(),
            m.cert_pem.as_bytes(),
            "coredump-apiserver.coredump-system.svc",
            now
        )
        .is_err());
        // Lifetimes as configured (to the second, minus nothing: not_after = now + validity).
        let now_s = unix(now);
        assert!((not_after(&m.cert_pem) - (now_s + 365 * 86400)).abs() <= 1);
        assert!((not_after(&m.ca_cert_pem) - (now_s + 3650 * 86400)).abs() <= 1);
        // The key is a PKCS#8 PEM the TLS layer can load.
        assert!(m.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn a_good_secret_is_reused_unchanged() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        let later = now + 100 * DAY;
        let (again, change) = reconcile(&data_of(&m), &cfg(), later).unwrap();
        assert_eq!(change, Change::None);
        assert_eq!(again, m);
    }

    #[test]
    fn the_certificate_is_renewed_with_a_third_of_its_life_left_under_the_same_ca() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        // 365 days: renewed once fewer than ~121.7 days are left.
        let (kept, change) = reconcile(&data_of(&m), &cfg(), now + 240 * DAY).unwrap();
        assert_eq!(change, Change::None);
        assert_eq!(kept.cert_pem, m.cert_pem);
        let later = now + 250 * DAY;
        let (renewed, change) = reconcile(&data_of(&m), &cfg(), later).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_ne!(renewed.cert_pem, m.cert_pem);
        assert_ne!(renewed.key_pem, m.key_pem);
        assert_eq!(renewed.ca_cert_pem, m.ca_cert_pem);
        assert_eq!(renewed.ca_key_pem, m.ca_key_pem);
        assert_eq!(renewed.ca_bundle_pem, m.ca_bundle_pem);
        verify_serving_cert(
            m.ca_bundle_pem.as_bytes(),
            renewed.cert_pem.as_bytes(),
            "coredump-apiserver.coredump-system.svc",
            later,
        )
        .unwrap();
        // An expired certificate is renewed too.
        let (_, change) = reconcile(&data_of(&m), &cfg(), now + 400 * DAY).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
    }

    #[test]
    fn the_ca_rotates_and_the_bundle_keeps_the_old_one_until_it_expires() {
        let mut c = cfg();
        c.ca_validity = 30 * DAY;
        c.cert_validity = 6 * DAY;
        let t0 = SystemTime::now();
        let (m0, _) = reconcile(&BTreeMap::new(), &c, t0).unwrap();
        // Keep the certificate fresh along the way, as the background task would: after
        // 4 or 5 days it has less than 2 of its 6 days left.
        let mut m1 = m0.clone();
        for day in [5, 10, 15, 19] {
            let (next, change) = reconcile(&data_of(&m1), &c, t0 + day * DAY).unwrap();
            assert!(
                matches!(change, Change::NewCert { .. }),
                "day {day}: {change:?}"
            );
            assert_eq!(next.ca_cert_pem, m0.ca_cert_pem, "day {day}");
            m1 = next;
        }
        // Day 21: the CA has less than a third (10 days) of its 30 days left.
        let t2 = t0 + 21 * DAY;
        let (m2, change) = reconcile(&data_of(&m1), &c, t2).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
        assert_ne!(m2.ca_cert_pem, m0.ca_cert_pem);
        let bundle = pem_certs(&m2.ca_bundle_pem);
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[0], pem_certs(&m2.ca_cert_pem)[0], "new CA first");
        assert_eq!(bundle[1], pem_certs(&m0.ca_cert_pem)[0]);
        // The bundle verifies both the certificate still being served and the new one.
        let name = "coredump-apiserver.coredump-system.svc";
        verify_serving_cert(
            m2.ca_bundle_pem.as_bytes(),
            m1.cert_pem.as_bytes(),
            name,
            t2,
        )
        .unwrap();
        verify_serving_cert(
            m2.ca_bundle_pem.as_bytes(),
            m2.cert_pem.as_bytes(),
            name,
            t2,
        )
        .unwrap();
        // Once the old CA has expired it leaves the bundle.
        let t3 = t0 + 31 * DAY;
        let (m3, change) = reconcile(&data_of(&m2), &c, t3).unwrap();
        assert!(
            matches!(change, Change::PrunedBundle | Change::NewCert { .. }),
            "{change:?}"
        );
        assert_eq!(m3.ca_cert_pem, m2.ca_cert_pem);
        assert_eq!(pem_certs(&m3.ca_bundle_pem), vec![bundle[0].clone()]);
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let mut c = cfg();
        c.ca_validity = 30 * DAY;
        c.cert_validity = 20 * DAY;
        let t0 = SystemTime::now();
        let (m0, _) = reconcile(&BTreeMap::new(), &c, t0).unwrap();
        // Day 14: the certificate has 6 of its 20 days left; the CA 16 of its 30 (kept).
        // The new certificate would run to day 34, but stops with the CA on day 30.
        let (m1, change) = reconcile(&data_of(&m0), &c, t0 + 14 * DAY).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_eq!(m1.ca_cert_pem, m0.ca_cert_pem);
        assert_eq!(not_after(&m1.cert_pem), not_after(&m1.ca_cert_pem));
    }

    #[test]
    fn unusable_contents_are_replaced() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        let (other, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();

        // A key that does not belong to the certificate: new certificate, same CA.
        let mut d = data_of(&m);
        d.insert(TLS_KEY_KEY.into(), other.key_pem.clone());
        let (fixed, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_eq!(fixed.ca_cert_pem, m.ca_cert_pem);

        // A certificate from another CA: new certificate from ours.
        let mut d = data_of(&m);
        d.insert(TLS_CERT_KEY.into(), other.cert_pem.clone());
        d.insert(TLS_KEY_KEY.into(), other.key_pem.clone());
        let (fixed, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_eq!(fixed.ca_cert_pem, m.ca_cert_pem);

        // A CA key that does not match: everything new.
        let mut d = data_of(&m);
        d.insert(CA_KEY_KEY.into(), other.ca_key_pem.clone());
        let (_, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");

        // Garbage.
        let d = BTreeMap::from([
            (CA_CERT_KEY.to_string(), "junk".to_string()),
            (TLS_CERT_KEY.to_string(), "junk".to_string()),
        ]);
        let (fixed, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
        verify_serving_cert(
            fixed.ca_bundle_pem.as_bytes(),
            fixed.cert_pem.as_bytes(),
            "coredump-apiserver.coredump-system.svc",
            now,
        )
        .unwrap();

        // A leaf certificate posing as the CA.
        let mut d = data_of(&m);
        d.insert(CA_CERT_KEY.into(), m.cert_pem.clone());
        d.insert(CA_KEY_KEY.into(), m.key_pem.clone());
        let (_, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
    }

    #[test]
    fn new_names_get_a_new_certificate() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        let mut c = cfg();
        c.extra_sans = vec![
            "coredump-apiserver.coredump-system.svc.cluster.local".into(),
            "10.0.0.7".into(),
        ];
        let (renamed, change) = reconcile(&data_of(&m), &c, now).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        for name in c.subject_alt_names() {
            verify_serving_cert(
                renamed.ca_bundle_pem.as_bytes(),
                renamed.cert_pem.as_bytes(),
                &name,
                now,
            )
            .unwrap();
        }
        let (_, change) = reconcile(&data_of(&renamed), &c, now).unwrap();
        assert_eq!(change, Change::None);
    }

    #[test]
    fn the_bundle_puts_the_current_ca_first_and_keeps_each_live_earlier_one_once() {
        let now = SystemTime::now();
        let mut short = cfg();
        short.ca_validity = 3 * DAY;
        short.cert_validity = DAY;
        let ca = |c: &SelfCertConfig, at: SystemTime| {
            let (m, _) = reconcile(&BTreeMap::new(), c, at).unwrap();
            pem_certs(&m.ca_cert_pem).remove(0)
        };
        let current = ca(&cfg(), now);
        let live = ca(&cfg(), now);
        let expiring = ca(&short, now);
        let now_s = unix(now);

        let b = next_bundle(
            &current,
            [
                live.clone(),
                current.clone(),
                live.clone(),
                expiring.clone(),
            ],
            now_s,
        );
        assert_eq!(b, vec![current.clone(), live.clone(), expiring.clone()]);
        // Four days on, the 3-day CA is gone; garbage never gets in.
        let later = unix(now + 4 * DAY);
        let b = next_bundle(&current, [expiring, b"junk".to_vec(), live.clone()], later);
        assert_eq!(b, vec![current.clone(), live]);
        assert_eq!(next_bundle(&current, [], now_s), vec![current]);
    }

    #[test]
    fn the_apiservice_is_patched_unless_it_trusts_exactly_the_bundle() {
        let bundle = b"bundle".as_slice();
        assert!(!ca_bundle_needs_patch(Some(bundle), None, bundle));
        assert!(!ca_bundle_needs_patch(Some(bundle), Some(false), bundle));
        assert!(ca_bundle_needs_patch(None, None, bundle));
        assert!(ca_bundle_needs_patch(Some(b"old"), None, bundle));
        // Skipping verification is cleared even when the bundle is right.
        assert!(ca_bundle_needs_patch(Some(bundle), Some(true), bundle));
    }
}
