// JUnit XML for `cilia policy test --junit FILE`: one <testsuite> per scenario, one <testcase>
// per query (a failed expectation is a <failure> with the decision chain, a query that could not
// be judged an <error>), and an <error> suite for a file that did not load. Renders only; the
// caller writes the file. This module is browser compatible.

export interface JunitCase {
  name: string;
  /** The verdict chain of a failed query. */
  failure?: { message: string; trace: string[] };
  error?: string;
  skipped?: boolean;
}

export interface JunitSuite {
  name: string;
  file?: string | undefined;
  cases: JunitCase[];
}

function esc(text: string): string {
  // XML 1.0 forbids most control characters even escaped: drop them.
  // deno-lint-ignore no-control-regex
  return text.replace(/[\x00-\x08\x0b\x0c\x0e-\x1f]/g, "").replace(/&/g, "&amp;")
    .replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function testcase(c: JunitCase, suite: string): string {
  const open = `    <testcase classname="${esc(suite)}" name="${esc(c.name)}"`;
  if (c.failure) {
    return `${open}>\n      <failure message="${esc(c.failure.message)}">${
      esc(c.failure.trace.join("\n"))
    }</failure>\n    </testcase>`;
  }
  if (c.error !== undefined) {
    return `${open}>\n      <error message="${esc(c.error)}"/>\n    </testcase>`;
  }
  if (c.skipped) return `${open}>\n      <skipped/>\n    </testcase>`;
  return `${open}/>`;
}

export function renderJunit(suites: readonly JunitSuite[]): string {
  const count = (f: (c: JunitCase) => unknown) =>
    suites.reduce((n, s) => n + s.cases.filter(f).length, 0);
  const total = suites.reduce((n, s) => n + s.cases.length, 0);
  const lines = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<testsuites name="cilia policy test" tests="${total}" failures="${
      count((c) => c.failure)
    }" errors="${count((c) => c.error !== undefined)}">`,
  ];
  for (const s of suites) {
    lines.push(
      `  <testsuite name="${esc(s.name)}"${
        s.file ? ` file="${esc(s.file)}"` : ""
      } tests="${s.cases.length}" failures="${s.cases.filter((c) => c.failure).length}" errors="${
        s.cases.filter((c) => c.error !== undefined).length
      }" skipped="${s.cases.filter((c) => c.skipped).length}">`,
      ...s.cases.map((c) => testcase(c, s.name)),
      `  </testsuite>`,
    );
  }
  lines.push(`</testsuites>`);
  return lines.join("\n") + "\n";
}
