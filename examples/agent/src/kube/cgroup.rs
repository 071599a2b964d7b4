//! The pod a process belongs to, read from its cgroup paths (`/proc/<pid>/cgroup`), as
//! istio-cni and SPIRE read them.
//!
//! A kubelet puts a pod's containers under a cgroup named after the pod uid, with the
//! container id last, in either driver's spelling:
//!
//! * cgroupfs: `/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/<container-id>`
//! * systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-<container-id>.scope`
//!
//! So a path matches when, after dropping a `.scope` suffix, it holds punctuation, `pod`,
//! the 32 hex digits of a uid (each of its five groups optionally followed by one
//! punctuation character), punctuation, then only non-punctuation runs separated by single
//! punctuation characters up to the end, the last run being the container id. The uid's
//! punctuation becomes `-`. Paths without a pod uid (CRI-O's `crio-<id>.scope`) name no pod.

/// A pod uid and container id found in one cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodContainer {
    pub(crate) pod_uid: String,
    pub(crate) container_id: String,
}

fn punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// The pod uid and container id in one cgroup path, if it names them.
pub(crate) fn parse_path(path: &str) -> Option<PodContainer> {
    let path = path.strip_suffix(".scope").unwrap_or(path);
    let chars: Vec<char> = path.chars().collect();
    // Leftmost match wins, as with a regular expression.
    (0..chars.len()).find_map(|start| match_at(&chars, start))
}

/// Matches `<punct>pod<uid><punct>(<segment><punct>)*<container-id>$` at `start`.
fn match_at(chars: &[char], start: usize) -> Option<PodContainer> {
    if !punct(*chars.get(start)?) {
        return None;
    }
    let mut i = start + 1;
    for expected in ['p', 'o', 'd'] {
        if *chars.get(i)? != expected {
            return None;
        }
        i += 1;
    }
    let mut uid = String::new();
    for (n, len) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        for _ in 0..len {
            let c = *chars.get(i)?;
            if !c.is_ascii_hexdigit() {
                return None;
            }
            uid.push(c);
            i += 1;
        }
        if n < 4 {
            if chars.get(i).is_some_and(|c| punct(*c)) {
                i += 1;
            }
            uid.push('-');
        }
    }
    if !punct(*chars.get(i)?) {
        return None;
    }
    i += 1;
    // The rest: non-punctuation runs separated by single punctuation characters, ending
    // with the container id.
    let rest = &chars[i..];
    let runs: Vec<&[char]> = rest.split(|c| punct(*c)).collect();
    if runs.iter().any(|r| r.is_empty()) {
        return None;
    }
    let container_id: String = runs.last()?.iter().collect();
    Some(PodContainer {
        pod_uid: uid,
        container_id,
    })
}

/// The pod of a process from the text of its `cgroup` file (`hierarchy:controllers:path`
/// per line). `Ok(None)` when no line names a pod; an error when lines name different
/// pods or containers, or a line is malformed.
pub(crate) fn pod_of_process(cgroup_file: &str) -> Result<Option<PodContainer>, String> {
    let mut found: Option<PodContainer> = None;
    for line in cgroup_file.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("malformed cgroup line {line:?}"));
        };
        let Some(this) = parse_path(path) else {
            continue;
        };
        match &found {
            None => found = Some(this),
            Some(f) if f.container_id != this.container_id => {
                return Err(format!(
                    "several container ids ({}, {})",
                    f.container_id, this.container_id
                ));
            }
            Some(f) if f.pod_uid != this.pod_uid => {
                return Err(format!(
                    "several pod uids ({}, {})",
                    f.pod_uid, this.pod_uid
                ));
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

    fn found(uid: &str, cid: &str) -> Option<PodContainer> {
        Some(PodContainer {
            pod_uid: uid.into(),
            container_id: cid.into(),
        })
    }

    #[test]
    fn cgroup_paths() {
        let table: &[(&str, Option<PodContainer>)] = &[
            ("/user.slice", None),
            ("/", None),
            (&format!("/kubepods/pod{UID}/{CID}"), found(UID, CID)),
            (
                &format!("/kubepods/burstable/pod{UID}/{CID}"),
                found(UID, CID),
            ),
            (
                "/kubepods/pod2c48913c_b29f_11e7_9350_020968147796/abc",
                found(UID, "abc"),
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-abc123.scope",
                found(UID, "abc123"),
            ),
            (
                "/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:b2a1",
                found("72f7f152-440c-66ac-9084-e0fc1d8a910c", "b2a1"),
            ),
            (
                "/docker/8d461fa5765781bc/kubepods/besteffort/poddaa5c7ee-3484-4533-af39-3591564fd03e/aff34703",
                found("daa5c7ee-3484-4533-af39-3591564fd03e", "aff34703"),
            ),
            (&format!("/../../pod{UID}/{CID}"), found(UID, CID)),
            (
                "/kubepods/pod2c48913cb29f11e79350020968147796/abc",
                found(UID, "abc"),
            ),
            // CRI-O without a pod uid names no pod.
            (
                "/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope",
                None,
            ),
            // The pod cgroup itself (no container under it).
            (&format!("/kubepods/burstable/pod{UID}"), None),
            (&format!("/kubepods/burstable/pod{UID}/"), None),
            // Two punctuation characters in a row after the uid.
            (&format!("/kubepods/pod{UID}//{CID}"), None),
            // Not hex, or too short.
            (
                "/kubepods/podzzzzzzzz-b29f-11e7-9350-020968147796/abc",
                None,
            ),
            ("/kubepods/pod2c48913c-b29f-11e7-9350-02096814779/abc", None),
            // "pod" must follow punctuation.
            (&format!("/kubepodspod{UID}x/{CID}"), None),
        ];
        for (path, want) in table {
            assert_eq!(&parse_path(path), want, "{path}");
        }
    }

    #[test]
    fn cgroup_files() {
        let v1 = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n1:name=systemd:/user.slice\n"
        );
        assert_eq!(pod_of_process(&v1), Ok(found(UID, CID)));
        let v2 = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(pod_of_process(&v2), Ok(found(UID, CID)));
        assert_eq!(pod_of_process("0::/\n"), Ok(None));
        assert_eq!(pod_of_process(""), Ok(None));
        assert!(pod_of_process("garbage").is_err());
        let two_containers =
            format!("2:cpu:/kubepods/pod{UID}/{CID}\n1:memory:/kubepods/pod{UID}/a55d9ac3\n");
        assert!(
            pod_of_process(&two_containers)
                .unwrap_err()
                .contains("container ids")
        );
        let two_pods = format!(
            "2:cpu:/kubepods/pod11111111-b29f-11e7-9350-020968147796/{CID}\n1:memory:/kubepods/pod22222222-b29f-11e7-9350-020968147796/{CID}\n"
        );
        assert!(pod_of_process(&two_pods).unwrap_err().contains("pod uids"));
    }
}
