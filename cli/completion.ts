// `cilia completion bash|zsh|fish`: shell completion scripts generated from the command registry
// (commands.ts), so a command added there completes without touching this module. Completes
// command words, then the flags of the command typed so far, then file names.

import { COMMANDS, type FlagHelp, GLOBAL_FLAGS } from "./commands.ts";
import { UsageError } from "./output.ts";

interface Tree {
  /** "" → top-level words; "policy" → its subcommands. */
  words: Map<string, Set<string>>;
  /** "policy trace" → its flags (with dashes). */
  flags: Map<string, string[]>;
}

function tree(): Tree {
  const words = new Map<string, Set<string>>([["", new Set()]]);
  const flags = new Map<string, string[]>();
  for (const c of COMMANDS) {
    const parts = c.name.split(" ");
    parts.forEach((w, i) => {
      const key = parts.slice(0, i).join(" ");
      if (!words.has(key)) words.set(key, new Set());
      words.get(key)!.add(w);
    });
    const all: FlagHelp[] = [...(c.flags ?? []), ...GLOBAL_FLAGS];
    flags.set(c.name, all.map((f) => `--${f.name}`));
  }
  words.get("")!.add("help");
  return { words, flags };
}

function bash(t: Tree): string {
  const cases = [...t.words].map(([k, ws]) => `    "${k}") words="${[...ws].join(" ")}" ;;`);
  const flagCases = [...t.flags].map(([k, fs]) => `    "${k}") flags="${fs.join(" ")}" ;;`);
  return `# cilia bash completion: source <(cilia completion bash)
_cilia() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" w words="" flags="--help --version --no-color"
  for w in "\${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
    case "$w" in -*) ;; *) case "\${path:+$path }$w" in ${
    [...t.words.keys()].filter(Boolean).map((k) => `"${k}"`).join("|") || '""'
  }|${[...t.flags.keys()].map((k) => `"${k}"`).join("|")}) path="\${path:+$path }$w" ;; esac ;; esac
  done
  case "$path" in
${cases.join("\n")}
  esac
  case "$path" in
${flagCases.join("\n")}
  esac
  if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$flags" -- "$cur"));
  elif [[ -n "$words" ]]; then COMPREPLY=($(compgen -W "$words" -- "$cur"));
  else COMPREPLY=($(compgen -f -- "$cur")); fi
}
complete -o filenames -F _cilia cilia
`;
}

function zsh(t: Tree): string {
  return `#compdef cilia
# cilia zsh completion: source <(cilia completion zsh)
autoload -U +X bashcompinit && bashcompinit
${bash(t).replace(/^# .*\n/, "")}`;
}

function fish(t: Tree): string {
  const out = ["# cilia fish completion: cilia completion fish | source", "complete -c cilia -f"];
  for (const [k, ws] of t.words) {
    const cond = k === ""
      ? "__fish_use_subcommand"
      : `__fish_seen_subcommand_from ${k.split(" ").at(-1)}`;
    out.push(`complete -c cilia -n '${cond}' -a '${[...ws].join(" ")}'`);
  }
  for (const [k, fs] of t.flags) {
    for (const f of fs) {
      out.push(
        `complete -c cilia -n '__fish_seen_subcommand_from ${k.split(" ").at(-1)}' -l ${
          f.slice(2)
        }`,
      );
    }
  }
  return out.join("\n") + "\n";
}

export function completionScript(shell: string | undefined): string {
  const t = tree();
  if (shell === "bash") return bash(t);
  if (shell === "zsh") return zsh(t);
  if (shell === "fish") return fish(t);
  throw new UsageError(
    `Unsupported shell ${
      shell === undefined ? "(none given)" : `"${shell}"`
    } for completion: expected bash, zsh or fish`,
  );
}
