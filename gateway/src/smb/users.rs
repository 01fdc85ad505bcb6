//! SMB users on one node (pure parts): the username map that lets an SMB user act as another
//! unix account, and the checks on names and passwords before they reach `smbpasswd`.
//!
//! smbd needs a unix account for every SMB user and keeps passwords in the node's own passdb,
//! so users are added on every node (`vipgate smb-user add` on each). The map, one
//! `unix = smb-name` line per mapped user, is `SambaPaths::username_map`.

/// Why a user cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error(
        "{0:?} is not a usable user name: use letters, digits, '.', '_' and '-', not starting with '-'"
    )]
    BadName(String),
    #[error("the password is empty")]
    EmptyPassword,
}

/// A user name smbpasswd and the username map take literally.
pub fn check_user_name(name: &str) -> Result<(), UserError> {
    let usable = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if usable {
        Ok(())
    } else {
        Err(UserError::BadName(name.to_owned()))
    }
}

/// The password from the first line of `input` (without its line ending).
pub fn password_from(input: &str) -> Result<&str, UserError> {
    let line = input.lines().next().unwrap_or("");
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(UserError::EmptyPassword);
    }
    Ok(line)
}

/// `map` with SMB user `smb_name` mapped to `unix` (`Some`), or unmapped (`None`). Lines of other
/// users, comments and blank lines are kept in order.
pub fn update_username_map(map: &str, smb_name: &str, unix: Option<&str>) -> String {
    let mut out = String::new();
    for line in map.lines() {
        if mapped_name(line) == Some(smb_name) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(unix) = unix.filter(|unix| *unix != smb_name) {
        out.push_str(&format!("{unix} = {smb_name}\n"));
    }
    out
}

/// The unix account `smb_name` acts as under `map`.
pub fn unix_account<'a>(map: &'a str, smb_name: &'a str) -> &'a str {
    map.lines()
        .filter(|line| mapped_name(line) == Some(smb_name))
        .filter_map(|line| line.split_once('=').map(|(unix, _)| unix.trim()))
        .next_back()
        .unwrap_or(smb_name)
}

/// The SMB name of a `unix = smb-name` line written by [`update_username_map`].
fn mapped_name(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.starts_with('#') || line.starts_with(';') {
        return None;
    }
    let (_, names) = line.split_once('=')?;
    let name = names.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_updated_in_place() {
        for (map, smb, unix, expected) in [
            ("", "demo", Some("nobody"), "nobody = demo\n"),
            ("nobody = demo\n", "demo", Some("nobody"), "nobody = demo\n"),
            ("nobody = demo\n", "demo", Some("guest"), "guest = demo\n"),
            ("nobody = demo\n", "demo", None, ""),
            ("nobody = demo\n", "demo", Some("demo"), ""),
            (
                "# kept\nbob = robert\nnobody = demo\n",
                "alice",
                Some("ally"),
                "# kept\nbob = robert\nnobody = demo\nally = alice\n",
            ),
            ("x = a b\n", "a", None, "x = a b\n"),
        ] {
            assert_eq!(
                update_username_map(map, smb, unix),
                expected,
                "{map:?} {smb} {unix:?}"
            );
        }
    }

    #[test]
    fn accounts_behind_names() {
        let map = "# comment\nnobody = demo\nbob = robert\n";
        assert_eq!(unix_account(map, "demo"), "nobody");
        assert_eq!(unix_account(map, "robert"), "bob");
        assert_eq!(unix_account(map, "alice"), "alice");
    }

    #[test]
    fn names_and_passwords() {
        for good in ["demo", "alice.b", "a_b-c", "X1"] {
            assert_eq!(check_user_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-x", "a b", "a=b", "a%b", "a\nb", "é"] {
            assert_eq!(
                check_user_name(bad),
                Err(UserError::BadName(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(password_from("secret\n"), Ok("secret"));
        assert_eq!(password_from("secret\r\nignored\n"), Ok("secret"));
        assert_eq!(password_from("a b c"), Ok("a b c"));
        assert_eq!(password_from("\n"), Err(UserError::EmptyPassword));
        assert_eq!(password_from(""), Err(UserError::EmptyPassword));
    }
}
