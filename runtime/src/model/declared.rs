//! What a binding declares for the record of processing activities (GDPR Art. 30(1)) that
//! keyhole cannot know by itself: whose data the handler processes and which kinds, who outside
//! the tenant receives what it produces, and whether it goes to a third country. Optional in a
//! `[[handler]]` (`[handler.declared]`) and in an uploaded handler's spec (`declared`) alike,
//! checked by the same rules (bounded, printable, each entry once) and shown, as declared, by
//! `keyhole processing-record`.
//!
//! A list left out is *not declared*; an empty list declares *none* (no recipients outside the
//! tenant, no transfers), which only `recipients` and `transfers` may say.

use serde::{Deserialize, Serialize};

/// The most entries one list may hold.
pub const MAX_ENTRIES: usize = 32;

/// The longest entry of `data_subjects`, `data_categories`, `recipients`, or a transfer's
/// `safeguard`, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

/// The longest `country` of a transfer, in characters.
pub const MAX_COUNTRY_CHARS: usize = 64;

/// A transfer of personal data to a third country or an international organisation (Art.
/// 30(1)(e)), by a recipient of what the handler produces or by the tenant itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The third country or international organisation, as the controller names it (an ISO
    /// 3166 code or a name): 1-64 characters.
    pub country: String,
    /// The safeguard the transfer rests on (an adequacy decision, standard contractual clauses,
    /// binding corporate rules, ...): 1-256 characters.
    pub safeguard: String,
}

/// What one binding declares: its `[handler.declared]` table, or `declared` in its spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// Categories of data subjects whose data the handler processes (Art. 30(1)(c)), e.g.
    /// `customers`. Left out: not declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_subjects: Option<Vec<String>>,
    /// Categories of personal data the handler processes (Art. 30(1)(c)), e.g. `date of
    /// birth`. Left out: not declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_categories: Option<Vec<String>>,
    /// Recipients outside the tenant of what the handler produces (Art. 30(1)(d)). Left out:
    /// not declared; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// Transfers to third countries or international organisations (Art. 30(1)(e)). Left out:
    /// not declared; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<Vec<Transfer>>,
}

impl Declared {
    /// Whether nothing is declared (then a spec leaves the field out).
    pub fn is_empty(&self) -> bool {
        self == &Declared::default()
    }

    /// Every problem, as `(key, what is wrong)` with the key relative to the binding
    /// (`data_categories[2]`, `transfers[0].country`); empty when the declarations are valid.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let lists = [
            ("data_subjects", &self.data_subjects, false),
            ("data_categories", &self.data_categories, false),
            ("recipients", &self.recipients, true),
        ];
        for (key, list, may_be_empty) in lists {
            let Some(list) = list else { continue };
            if list.is_empty() && !may_be_empty {
                problems.push((key.to_string(), "must name at least one entry, or be left out".to_string()));
            }
            check_list(key, list.iter().map(String::as_str), MAX_TEXT_CHARS, &mut problems);
        }
        if let Some(transfers) = &self.transfers {
            // Checked entry by entry only within the bound: a spec is a request body.
            if transfers.len() > MAX_ENTRIES {
                problems.push(("transfers".into(), format!("must hold at most {MAX_ENTRIES} entries")));
            }
            for (i, transfer) in transfers.iter().enumerate().take(MAX_ENTRIES) {
                let at = |field: &str| format!("transfers[{i}].{field}");
                if let Err(problem) = check_text(&transfer.country, MAX_COUNTRY_CHARS) {
                    problems.push((at("country"), problem));
                }
                if let Err(problem) = check_text(&transfer.safeguard, MAX_TEXT_CHARS) {
                    problems.push((at("safeguard"), problem));
                }
                if transfers[..i].contains(transfer) {
                    problems.push((format!("transfers[{i}]"), "is listed twice".into()));
                }
            }
        }
        problems
    }

    /// [`Declared::problems`] in one sentence, each key after `prefix` (`declared.key: problem;
    /// declared.key: problem`), or `Ok`.
    pub fn check(&self, prefix: &str) -> Result<(), String> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let each: Vec<String> =
            problems.iter().map(|(key, problem)| format!("{prefix}{key}: {problem}")).collect();
        Err(each.join("; "))
    }
}

fn check_list<'a>(
    key: &str,
    entries: impl ExactSizeIterator<Item = &'a str>,
    max_chars: usize,
    problems: &mut Vec<(String, String)>,
) {
    if entries.len() > MAX_ENTRIES {
        problems.push((key.to_string(), format!("must hold at most {MAX_ENTRIES} entries")));
    }
    let mut seen = Vec::new();
    for (i, entry) in entries.enumerate().take(MAX_ENTRIES) {
        if let Err(problem) = check_text(entry, max_chars) {
            problems.push((format!("{key}[{i}]"), problem));
        } else if seen.contains(&entry) {
            problems.push((format!("{key}[{i}]"), format!("{entry:?} is listed twice")));
        }
        seen.push(entry);
    }
}

/// One entry: not blank, at most `max_chars` characters, none of them a control character or
/// an invisible one that reorders text (a record a person reads must show what it holds).
fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be blank".into());
    }
    if text.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() || is_invisible_formatting(*c)) {
        return Err(format!(
            "must not contain control or invisible formatting characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// Bidirectional overrides and isolates, marks, zero-width characters and the byte order mark:
/// characters that change how the text around them is shown without being seen.
fn is_invisible_formatting(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}'
        | '\u{061C}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::{Declared, MAX_ENTRIES, Transfer};

    fn texts(entries: &[&str]) -> Option<Vec<String>> {
        Some(entries.iter().map(|e| e.to_string()).collect())
    }

    fn keys(declared: &Declared) -> Vec<String> {
        declared.problems().into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn declarations_in_any_script_within_the_bounds_are_accepted() {
        let declared = Declared {
            data_subjects: texts(&["Kundinnen und Kunden", "clients (Québec)"]),
            data_categories: texts(&["Geburtsdatum", "country of residence", &"x".repeat(256)]),
            recipients: Some(Vec::new()),
            transfers: Some(vec![Transfer {
                country: "US".into(),
                safeguard: "Standard contractual clauses (EU 2021/914), module 2".into(),
            }]),
        };
        assert_eq!(declared.problems(), Vec::new());
        assert_eq!(Declared::default().problems(), Vec::new(), "nothing declared is valid");
    }

    #[test]
    fn control_and_invisible_characters_are_refused_with_their_key() {
        let declared = Declared {
            data_categories: texts(&[
                "date of birth",
                "name\nInjected: line",
                "a\u{202E}txt.exe",
                "\u{200B}",
            ]),
            ..Declared::default()
        };
        assert_eq!(keys(&declared), ["data_categories[1]", "data_categories[2]", "data_categories[3]"]);
        let message = declared.check("declared.").unwrap_err();
        assert!(message.starts_with("declared.data_categories[1]: "), "{message}");
        assert!(message.contains("U+000A") && message.contains("U+202E"), "{message}");
    }

    #[test]
    fn lengths_and_counts_are_bounded() {
        let declared = Declared {
            data_subjects: texts(&[&"x".repeat(257)]),
            recipients: Some((0..=MAX_ENTRIES).map(|i| format!("recipient {i}")).collect()),
            transfers: Some(vec![
                Transfer { country: "c".repeat(65), safeguard: "s".repeat(257) };
                MAX_ENTRIES + 1
            ]),
            ..Declared::default()
        };
        let found = keys(&declared);
        for key in
            ["data_subjects[0]", "recipients", "transfers", "transfers[0].country", "transfers[0].safeguard"]
        {
            assert!(found.iter().any(|k| k == key), "{key} not in {found:?}");
        }
        assert!(found.iter().any(|k| k == "transfers[1]"), "a repeated transfer: {found:?}");
    }

    #[test]
    fn blank_repeated_and_empty_where_none_means_nothing_are_refused() {
        let declared = Declared {
            data_subjects: texts(&["customers", "  ", "customers"]),
            data_categories: Some(Vec::new()),
            ..Declared::default()
        };
        assert_eq!(keys(&declared), ["data_subjects[1]", "data_subjects[2]", "data_categories"]);
        // No recipients and no transfers are declarations of their own.
        let none =
            Declared { recipients: Some(Vec::new()), transfers: Some(Vec::new()), ..Declared::default() };
        assert_eq!(none.problems(), Vec::new());
        assert!(!none.is_empty() && Declared::default().is_empty());
    }
}
