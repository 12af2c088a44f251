//! The README's benchmark table marks each target met or missed; the verdicts must follow from
//! the numbers next to them, by the rule the page states: the measured number against the target's `≥`, `≤`
//! or `=` and number, in the same unit, thousands separators ignored, nothing rounded.

use crate::docs_run::repo_root;

/// A number followed by its unit: `5.13 ms` is (5.13, "ms"), `623,396 events/s` is
/// (623396, "events/s").
fn quantity(text: &str) -> Result<(f64, String), String> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(text.len());
    let number = text[..end].replace(',', "");
    let number = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    Ok((number, text[end..].trim().to_owned()))
}

/// The verdict a row's numbers give.
fn verdict(measured: &str, target: &str) -> Result<&'static str, String> {
    let (value, unit) = quantity(measured)?;
    let target = target.trim();
    let (comparison, rest) = ["≥", "≤", "="]
        .into_iter()
        .find_map(|sign| target.strip_prefix(sign).map(|rest| (sign, rest)))
        .ok_or_else(|| format!("target `{target}` starts with none of ≥, ≤, ="))?;
    let (bound, target_unit) = quantity(rest)?;
    if unit != target_unit {
        return Err(format!(
            "`{measured}` and `{target}` are not in the same unit"
        ));
    }
    let met = match comparison {
        "≥" => value >= bound,
        "≤" => value <= bound,
        _ => value == bound,
    };
    Ok(if met { "met" } else { "missed" })
}

#[test]
fn the_rule_compares_in_the_same_unit() {
    assert_eq!(verdict("0.27", "≥ 0.70"), Ok("missed"));
    assert_eq!(verdict("93.7 %", "≥ 95 %"), Ok("missed"));
    assert_eq!(verdict("5.13 ms", "≤ 5 ms"), Ok("missed"));
    assert_eq!(verdict("0.96 ms", "≤ 1 ms"), Ok("met"));
    assert_eq!(verdict("0 lost", "= 0 lost"), Ok("met"));
    assert_eq!(verdict("3 lost", "= 0 lost"), Ok("missed"));
    assert_eq!(verdict("623,396 events/s", "≥ 500,000 events/s"), Ok("met"));
    assert!(verdict("16.5 KiB", "≤ 64 MiB").is_err());
    assert!(verdict("fast", "≥ 1").is_err());
}

#[test]
fn every_benchmark_verdict_follows_from_its_numbers() {
    let page = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut lines = page.lines().enumerate();
    lines
        .find(|(_, line)| *line == "| scenario | before | measured | target | verdict |")
        .expect("the README has the table of targets");
    let mut rows = 0;
    let mut problems = Vec::new();
    for (index, line) in lines.skip(1) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, scenario, before, measured, target, written, _] = cells[..] else {
            problems.push(format!("line {}: not five cells: {line}", index + 1));
            continue;
        };
        rows += 1;
        if before.is_empty() {
            problems.push(format!("line {}: {scenario}: no before", index + 1));
        }
        match verdict(measured, target) {
            Ok(expected) if expected == written => {}
            Ok(expected) => problems.push(format!(
                "line {}: {scenario}: {measured} against {target} is {expected}, not {written}",
                index + 1
            )),
            Err(error) => problems.push(format!("line {}: {scenario}: {error}", index + 1)),
        }
    }
    assert!(rows >= 5, "only {rows} rows of targets");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
