export interface LintWarning {
  message: string;
}
export function lintPolicies(): LintWarning[] {
  return [];
}
