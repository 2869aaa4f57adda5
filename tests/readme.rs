//! Keeps README.md's limits table true: every limit of the config table, with its default and range, and nothing else.

use ringmx::config::limits_table;

#[test]
fn readme_lists_every_limit_with_its_default_and_range() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Limits\n")
        .nth(1)
        .expect("README.md has a Limits section");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .filter(|cells: &Vec<String>| cells.len() == 5)
        .collect();
    for spec in limits_table() {
        let row = rows
            .iter()
            .find(|r| r[0] == spec.name)
            .unwrap_or_else(|| panic!("README.md has no row for `{}`", spec.name));
        // A flag's default reads "0 (false)": the number is what counts.
        let parse = |cell: &str| {
            let number = cell.split_whitespace().next().unwrap_or("");
            number.replace(['_', ','], "").parse::<u64>().unwrap()
        };
        assert_eq!(
            (parse(&row[1]), parse(&row[2]), parse(&row[3])),
            (spec.default, spec.min, spec.max),
            "README.md row for `{}` (default, min, max)",
            spec.name
        );
    }
    for row in &rows {
        assert!(
            limits_table().any(|s| s.name == row[0]),
            "README.md lists unknown limit `{}`",
            row[0]
        );
    }
}
