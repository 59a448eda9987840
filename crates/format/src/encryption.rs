//! What an image asks of its root's encryption, as the spec says it, the initramfs
//! carries it (`/etc/oneimage/encryption`) and the first-boot record keeps it.

use std::fmt;
use std::str::FromStr;

/// Where the initramfs holds the image's policy, one word and a newline.
pub const POLICY_PATH: &str = "/etc/oneimage/encryption";

/// Bytes the builder leaves free after the root filesystem, inside its partition, for
/// the LUKS2 header an in-place encryption puts in front of the data
/// (`cryptsetup reencrypt --encrypt --reduce-device-size`): cryptsetup's recommended
/// minimum, twice its default header.
pub const HEADER_ROOM: u64 = 32 << 20;

/// The name of the unlocked root under `/dev/mapper`.
pub const MAPPING: &str = "oneimage-root";

/// The encryption an image asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The root is never encrypted (the default).
    #[default]
    Off,
    /// The first persistent boot asks whether to encrypt; an empty answer declines, and
    /// the copy is not asked again.
    Offer,
    /// The first persistent boot encrypts; a passphrase is required to go on.
    Require,
    /// The image is encrypted at build time with a public passphrase; the first
    /// persistent boot asks for a new one and re-encrypts to a new volume key.
    BuildKey,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 4] = [
        Policy::Off,
        Policy::Offer,
        Policy::Require,
        Policy::BuildKey,
    ];

    /// The policy's name in the spec, the initramfs and `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::Offer => "offer",
            Policy::Require => "require",
            Policy::BuildKey => "build-key",
        }
    }

    /// The policy's number in the first-boot record.
    pub fn code(self) -> u32 {
        match self {
            Policy::Off => 0,
            Policy::Offer => 1,
            Policy::Require => 2,
            Policy::BuildKey => 3,
        }
    }

    /// The policy a record's number means, if any.
    pub fn from_code(code: u32) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.code() == code)
    }

    /// Whether the boot needs cryptsetup and dm-crypt: any policy but `off`.
    pub fn needs_cryptsetup(self) -> bool {
        self != Policy::Off
    }

    /// Whether the user may decline (an empty passphrase).
    pub fn may_decline(self) -> bool {
        self == Policy::Offer
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        let s = s.trim();
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?}: expected off, offer, require or build-key"))
    }
}

/// What the initramfs tells the agent ([`POLICY_PATH`]), one `key=value` per line:
/// `policy`, `discards` (`yes` or `no`), and for an image encrypted at build time its
/// public passphrase and the digest of its volume key as built (`build-passphrase`,
/// `build-digest`), by which the agent tells a root still under the public key from one
/// re-encrypted. None of it is secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// The image's policy.
    pub policy: Policy,
    /// Open the root with discards allowed.
    pub discards: bool,
    /// For `build-key`: what the image was encrypted with.
    pub build_key: Option<BuildKeyFacts>,
}

/// What an image encrypted at build time was encrypted with (both public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildKeyFacts {
    /// The documented passphrase.
    pub passphrase: String,
    /// The LUKS2 header's digest of the volume key as built (base64, as in its JSON).
    pub digest: String,
}

impl Settings {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "policy={}\ndiscards={}\n",
            self.policy,
            if self.discards { "yes" } else { "no" }
        );
        if let Some(b) = &self.build_key {
            s.push_str(&format!(
                "build-passphrase={}\nbuild-digest={}\n",
                b.passphrase, b.digest
            ));
        }
        s
    }

    /// Reads the file's text.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let mut s = Settings::default();
        let (mut passphrase, mut digest) = (None, None);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("{line:?}: expected key=value"))?;
            match k.trim() {
                "policy" => s.policy = v.parse()?,
                "discards" => {
                    s.discards = match v.trim() {
                        "yes" => true,
                        "no" => false,
                        other => return Err(format!("discards={other}: expected yes or no")),
                    }
                }
                "build-passphrase" => passphrase = Some(v.to_string()),
                "build-digest" => digest = Some(v.trim().to_string()),
                other => return Err(format!("{other:?}: not a setting this agent knows")),
            }
        }
        // An initramfs a kernel update made has the policy but not the facts: the
        // copy it boots was re-keyed long before.
        s.build_key = match (s.policy, passphrase, digest) {
            (Policy::BuildKey, Some(passphrase), Some(digest)) => {
                Some(BuildKeyFacts { passphrase, digest })
            }
            (_, None, None) => None,
            _ => {
                return Err(
                    "build-passphrase and build-digest go together, with policy=build-key".into(),
                )
            }
        };
        Ok(s)
    }
}

/// How a copy's encryption step ended, as its record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Not decided yet (or no encryption step).
    #[default]
    Pending,
    /// The root is LUKS2 with the user's passphrase.
    Encrypted,
    /// The user declined; the root stays plain and the copy is not asked again.
    Declined,
}

impl Outcome {
    /// The outcome's number in the record.
    pub fn code(self) -> u32 {
        match self {
            Outcome::Pending => 0,
            Outcome::Encrypted => 1,
            Outcome::Declined => 2,
        }
    }

    /// The outcome a record's number means, if any.
    pub fn from_code(code: u32) -> Option<Outcome> {
        [Outcome::Pending, Outcome::Encrypted, Outcome::Declined]
            .into_iter()
            .find(|o| o.code() == code)
    }

    /// The outcome's name in logs and `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Encrypted => "encrypted",
            Outcome::Declined => "declined",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_names_and_codes() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>(), Ok(p));
            assert_eq!(Policy::from_code(p.code()), Some(p));
        }
        assert_eq!(" require\n".parse::<Policy>(), Ok(Policy::Require));
        let e = "on".parse::<Policy>().unwrap_err();
        assert!(
            e.contains("expected off, offer, require or build-key"),
            "{e}"
        );
        assert_eq!(Policy::from_code(4), None);
        assert!(Policy::Offer.may_decline() && !Policy::Require.may_decline());
        assert!(!Policy::Off.needs_cryptsetup() && Policy::BuildKey.needs_cryptsetup());
        for o in [Outcome::Pending, Outcome::Encrypted, Outcome::Declined] {
            assert_eq!(Outcome::from_code(o.code()), Some(o));
        }
        assert_eq!(Outcome::from_code(3), None);
        for s in [
            Settings::default(),
            Settings {
                policy: Policy::Require,
                discards: true,
                build_key: None,
            },
            Settings {
                policy: Policy::BuildKey,
                discards: false,
                build_key: Some(BuildKeyFacts {
                    passphrase: "one image".into(),
                    digest: "q83v".into(),
                }),
            },
        ] {
            assert_eq!(Settings::parse(&s.to_text()), Ok(s.clone()));
        }
        assert_eq!(Settings::parse(""), Ok(Settings::default()));
        assert!(Settings::parse("policy=offer\ntrim=yes")
            .unwrap_err()
            .contains("\"trim\""));
        assert_eq!(Settings::parse("policy=build-key").unwrap().build_key, None);
        assert!(Settings::parse("policy=offer\nbuild-digest=x")
            .unwrap_err()
            .contains("go together"));
    }
}
