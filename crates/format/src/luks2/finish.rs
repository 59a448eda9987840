//! Finishing a re-key that cryptsetup cut short after the last of the data had moved.
//!
//! cryptsetup (2.6, and still upstream) ends a re-encryption to a new volume key in
//! three writes: it wipes and removes each keyslot of the old volume key, erases the
//! backup segments, and finally wipes the re-encryption keyslot, whose header update
//! also drops the `online-reencrypt-v2` requirement. On a disk that reports itself
//! rotational each wipe is 40 passes, seconds of writes. A power cut inside one leaves a
//! header that still requires the re-encryption to be resumed, while the old volume
//! key, which resuming needs, is gone: `cryptsetup repair`, `reencrypt --resume-only`
//! and `open` all fail, though every byte of data is already under the new key.
//!
//! What cryptsetup left undone is told from the header alone, and is done here: the
//! header rewritten with only the new key's segment, keyslots and digest and without
//! the requirement (both copies, a higher sequence number, fresh checksums), and the
//! unused keyslot areas named for wiping.

use super::{be64, checksum_ok, header_len, Luks2Error, BINARY_LEN};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The header that ends a re-key cut short in its finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRekey {
    /// Both header copies (`2 * hdr_size` bytes), to write at the device's start.
    pub headers: Vec<u8>,
    /// The keyslot areas no longer used, as (byte offset, length), to wipe.
    pub unused_areas: Vec<(u64, u64)>,
    /// The keyslots removed, by number.
    pub removed_keyslots: Vec<u32>,
}

/// The newest of the two header copies in `bytes` (the device's first `2 * hdr_size`
/// bytes) whose checksum holds: its offset and sequence number.
fn newest_copy(bytes: &[u8], len: usize) -> Option<(usize, u64)> {
    [0, len]
        .into_iter()
        .filter(|&at| bytes.len() >= at + len && checksum_ok(&bytes[at..at + len]))
        .map(|at| (at, be64(bytes, at + 16)))
        .max_by_key(|&(_, seqid)| seqid)
}

/// The flags of segment `s` (`backup-final`, `backup-previous`... for the backups a
/// re-encryption keeps).
fn flags(s: &Value) -> Vec<&str> {
    s.get("flags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The id of the digest whose `list` (`keyslots` or `segments`) names `id`.
fn digest_of<'a>(digests: &'a Map<String, Value>, list: &str, id: &str) -> Option<&'a str> {
    digests.iter().find_map(|(d, v)| {
        v.get(list)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(id)))
            .then_some(d.as_str())
    })
}

/// `Some` when `bytes` (the device's first `2 * hdr_size` bytes) hold a re-key whose data
/// is all under the new volume key but whose header still requires the re-encryption:
/// one data segment, the whole device, bound to the digest of the `backup-final`
/// segment, while the `backup-previous` one is bound to another. `None` for any other
/// header, a re-encryption with data still to move above all.
pub fn finish_rekey(bytes: &[u8]) -> Result<Option<FinishedRekey>, Luks2Error> {
    let len = header_len(bytes).ok_or(Luks2Error::NotLuks2)?;
    let Some((at, seqid)) = newest_copy(bytes, len) else {
        return Ok(None);
    };
    let json = &bytes[at + BINARY_LEN..at + len];
    let end = json.iter().position(|&b| b == 0).unwrap_or(json.len());
    let mut meta: Value =
        serde_json::from_slice(&json[..end]).map_err(|e| Luks2Error::Json(e.to_string()))?;
    let reencrypting = meta
        .pointer("/config/requirements/mandatory")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().any(|r| {
                r.as_str()
                    .is_some_and(|r| r.starts_with("online-reencrypt"))
            })
        });
    if !reencrypting {
        return Ok(None);
    }
    let object = |meta: &Value, key: &str| -> Result<Map<String, Value>, Luks2Error> {
        meta.get(key)
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| Luks2Error::Json(format!("no {key:?} object")))
    };
    let segments = object(&meta, "segments")?;
    let digests = object(&meta, "digests")?;
    let keyslots = object(&meta, "keyslots")?;

    let data: Vec<(&String, &Value)> = segments
        .iter()
        .filter(|(_, s)| !flags(s).iter().any(|f| f.starts_with("backup-")))
        .collect();
    let with_flag = |flag: &str| {
        segments
            .iter()
            .find(|(_, s)| flags(s).contains(&flag))
            .map(|(id, s)| (id.as_str(), s))
    };
    let [(data_id, data)] = data.as_slice() else {
        return Ok(None);
    };
    let (Some((final_id, _)), Some((previous_id, previous))) =
        (with_flag("backup-final"), with_flag("backup-previous"))
    else {
        return Ok(None);
    };
    let whole_and_encrypted = data.get("type").and_then(Value::as_str) == Some("crypt")
        && data.get("size").and_then(Value::as_str) == Some("dynamic")
        && previous.get("type").and_then(Value::as_str) == Some("crypt");
    let new = digest_of(&digests, "segments", data_id);
    let old = digest_of(&digests, "segments", previous_id);
    let (Some(new), Some(old)) = (new, old) else {
        return Ok(None);
    };
    if !whole_and_encrypted || digest_of(&digests, "segments", final_id) != Some(new) || old == new
    {
        return Ok(None);
    }

    // Keyslots of the old key, and the re-encryption's own, go.
    let removed: Vec<String> = keyslots
        .iter()
        .filter(|(id, k)| {
            k.get("type").and_then(Value::as_str) == Some("reencrypt")
                || digest_of(&digests, "keyslots", id) == Some(old)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let mut unused_areas = Vec::new();
    for id in &removed {
        let area = &keyslots[id]["area"];
        let number = |k: &str| {
            area.get(k).and_then(|x| {
                x.as_u64()
                    .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
            })
        };
        if let (Some(o), Some(l)) = (number("offset"), number("size")) {
            unused_areas.push((o, l));
        }
    }
    let kept = |list: &Value| -> Value {
        Value::Array(
            list.as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| !removed.iter().any(|r| Some(r.as_str()) == x.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        )
    };

    let mut segment = (*data).clone();
    if let Some(s) = segment.as_object_mut() {
        s.remove("flags");
    }
    let mut new_digests = Map::new();
    for (id, d) in &digests {
        let mut d = d.clone();
        let slots = kept(&d["keyslots"]);
        let segs = if id == new {
            vec![Value::from("0")]
        } else {
            Vec::new()
        };
        if slots.as_array().is_some_and(Vec::is_empty) && segs.is_empty() {
            continue;
        }
        d["keyslots"] = slots;
        d["segments"] = Value::Array(segs);
        new_digests.insert(id.clone(), d);
    }
    let mut new_keyslots = keyslots.clone();
    new_keyslots.retain(|id, _| !removed.contains(id));
    meta["keyslots"] = Value::Object(new_keyslots);
    meta["segments"] = Value::Object(Map::from_iter([("0".to_string(), segment)]));
    meta["digests"] = Value::Object(new_digests);
    if let Some(tokens) = meta.get_mut("tokens").and_then(Value::as_object_mut) {
        for t in tokens.values_mut() {
            if t.get("keyslots").is_some() {
                t["keyslots"] = kept(&t["keyslots"]);
            }
        }
    }
    if let Some(req) = meta
        .pointer_mut("/config/requirements")
        .and_then(Value::as_object_mut)
    {
        if let Some(m) = req.get_mut("mandatory").and_then(Value::as_array_mut) {
            m.retain(|r| {
                !r.as_str()
                    .is_some_and(|r| r.starts_with("online-reencrypt"))
            });
            if m.is_empty() {
                req.remove("mandatory");
            }
        }
    }
    if let Some(config) = meta.get_mut("config").and_then(Value::as_object_mut) {
        if config
            .get("requirements")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            config.remove("requirements");
        }
    }

    let text = serde_json::to_vec(&meta).map_err(|e| Luks2Error::Json(e.to_string()))?;
    if text.len() >= len - BINARY_LEN {
        return Err(Luks2Error::Json(format!(
            "the finished metadata takes {} bytes, more than its {}-byte area",
            text.len(),
            len - BINARY_LEN
        )));
    }
    let mut headers = vec![0u8; 2 * len];
    for (i, copy) in headers.chunks_mut(len).enumerate() {
        // Each copy keeps its own binary header (its salt above all) when that one is
        // sound; the newest stands in for one a cut damaged.
        let mine = i * len;
        let from = if checksum_ok(&bytes[mine..mine + len]) {
            mine
        } else {
            at
        };
        copy[..BINARY_LEN].copy_from_slice(&bytes[from..from + BINARY_LEN]);
        copy[..6].copy_from_slice(if i == 0 {
            super::MAGIC
        } else {
            super::MAGIC_SECONDARY
        });
        copy[16..24].copy_from_slice(&(seqid + 1).to_be_bytes());
        copy[256..264].copy_from_slice(&(mine as u64).to_be_bytes());
        copy[448..512].fill(0);
        copy[BINARY_LEN..BINARY_LEN + text.len()].copy_from_slice(&text);
        let sum = Sha256::digest(&*copy);
        copy[448..480].copy_from_slice(&sum);
    }
    let mut removed_keyslots: Vec<u32> = removed.iter().filter_map(|r| r.parse().ok()).collect();
    removed_keyslots.sort_unstable();
    Ok(Some(FinishedRekey {
        headers,
        unused_areas,
        removed_keyslots,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{read, tests::header};
    use super::*;

    /// A re-key's header as cryptsetup 2.6 left it when a cut fell in the wipe of the
    /// old key's keyslot (keyslot 0, digest 0): the data all in segment 0 under digest 1.
    const CUT_IN_THE_FINISH: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,"area":{"type":"raw","offset":"290816","size":"258048","encryption":"aes-xts-plain64","key_size":64}},"1":{"type":"luks2","key_size":64,"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64}},"2":{"type":"reencrypt","key_size":1,"mode":"reencrypt","direction":"forward","area":{"type":"checksum","offset":"548864","size":"16228352","hash":"sha256","sector_size":512}}},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512},"1":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512,"flags":["backup-previous"]},"2":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512,"flags":["backup-final"]}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["1"],"hash":"sha256","iterations":1000,"salt":"AA==","digest":"b2xk"},"1":{"type":"pbkdf2","keyslots":["1"],"segments":["0","2"],"hash":"sha256","iterations":1000,"salt":"AQ==","digest":"bmV3"},"2":{"type":"pbkdf2","keyslots":["2"],"segments":[],"hash":"sha256","iterations":1000,"salt":"Ag==","digest":"cmVl"}},"config":{"json_size":"12288","keyslots_size":"16744448","requirements":{"mandatory":["online-reencrypt-v2"]}}}"#;

    fn both_copies(json: &str) -> Vec<u8> {
        let mut b = header(json, true);
        let mut second = header(json, true);
        second[..6].copy_from_slice(super::super::MAGIC_SECONDARY);
        second[256..264].copy_from_slice(&(16u64 << 10).to_be_bytes());
        second[448..480].fill(0);
        let sum = Sha256::digest(&second);
        second[448..480].copy_from_slice(&sum);
        b.extend(second);
        b
    }

    #[test]
    fn a_rekey_cut_in_its_finish_is_finished_with_the_new_key_alone() {
        let f = finish_rekey(&both_copies(CUT_IN_THE_FINISH))
            .unwrap()
            .expect("finishable");
        assert_eq!(f.removed_keyslots, vec![0, 2]);
        assert_eq!(f.unused_areas, vec![(290816, 258048), (548864, 16228352)]);
        let len = 16 << 10;
        for copy in f.headers.chunks(len) {
            let h = read(&{
                let mut c = copy.to_vec();
                c[..6].copy_from_slice(super::super::MAGIC);
                c
            })
            .unwrap();
            assert_eq!(h.seqid, 8);
            assert!(!h.reencrypt_in_progress());
            assert_eq!(h.keyslots.len(), 1);
            assert_eq!(h.keyslots[0].id, 1);
            assert_eq!(h.segments.len(), 1);
            assert_eq!(h.digests, vec!["bmV3".to_string()]);
        }
        assert!(checksum_ok(&f.headers[..len]) && checksum_ok(&f.headers[len..]));
        assert_eq!(&f.headers[len..len + 6], super::super::MAGIC_SECONDARY);
        assert_eq!(be64(&f.headers, len + 256), len as u64);
        let text = String::from_utf8_lossy(&f.headers[BINARY_LEN..len]);
        assert!(text.contains(r#""segments":{"0":{"encryption":"aes-xts-plain64","iv_tweak":"0","offset":"16777216","sector_size":512,"size":"dynamic","type":"crypt"}}"#), "{text}");
        assert!(!text.contains("requirements"), "{text}");
    }

    #[test]
    fn a_header_with_data_still_to_move_is_left_to_cryptsetup() {
        // Mid-way: the new key's segment, the hotzone, then the old key's.
        let mid = CUT_IN_THE_FINISH.replace(
            r#""0":{"type":"crypt","offset":"16777216","size":"dynamic","#,
            r#""0":{"type":"crypt","offset":"16777216","size":"1048576","#,
        );
        let mid = mid.replace(
            r#""segments":["0","2"]"#,
            r#""segments":["0","2"]},"9":{"type":"pbkdf2","keyslots":[],"segments":["3"]"#,
        );
        let mid = mid.replace(
            r#""segments":{"#,
            r#""segments":{"3":{"type":"crypt","offset":"17825792","size":"dynamic","iv_tweak":"2048","encryption":"aes-xts-plain64","sector_size":512},"#,
        );
        assert_eq!(finish_rekey(&both_copies(&mid)).unwrap(), None);
        // An encryption of a plain device: its previous segment is `linear`, no key.
        let enc = CUT_IN_THE_FINISH.replace(
            r#""1":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512,"flags":["backup-previous"]}"#,
            r#""1":{"type":"linear","offset":"16777216","size":"dynamic","flags":["backup-previous"]}"#,
        );
        assert_eq!(finish_rekey(&both_copies(&enc)).unwrap(), None);
        // Nothing in progress.
        let done = CUT_IN_THE_FINISH.replace(
            r#""requirements":{"mandatory":["online-reencrypt-v2"]}"#,
            r#""x":1"#,
        );
        assert_eq!(finish_rekey(&both_copies(&done)).unwrap(), None);
        // Neither copy's checksum holds: nothing is trusted.
        let mut bad = both_copies(CUT_IN_THE_FINISH);
        bad[5000] ^= 1;
        bad[(16 << 10) + 5000] ^= 1;
        assert_eq!(finish_rekey(&bad).unwrap(), None);
    }

    #[test]
    fn the_newest_sound_copy_is_the_one_finished() {
        // The primary was torn by the cut: the secondary, older or not, is used.
        let mut b = both_copies(CUT_IN_THE_FINISH);
        b[5000] ^= 1;
        let f = finish_rekey(&b)
            .unwrap()
            .expect("finishable from the secondary");
        assert!(checksum_ok(&f.headers[..16 << 10]));
    }
}
