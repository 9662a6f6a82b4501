// Collects validation issues while a document is translated, with the document path of each, and
// turns them into located ValidationIssues. This module is browser compatible.

import { formatPath, type PathPart, type SourceDocument } from "./documents.ts";
import type { ValidationIssue } from "./errors.ts";

export class IssueSink {
  readonly issues: ValidationIssue[] = [];
  readonly warnings: ValidationIssue[] = [];
  #doc: SourceDocument;
  #policy: string | undefined;

  constructor(doc: SourceDocument, policy?: string) {
    this.#doc = doc;
    this.#policy = policy;
  }

  #make(path: readonly PathPart[], message: string, key?: string): ValidationIssue {
    const at = this.#doc.locate(path, key);
    const full = key !== undefined ? [...path, key] : path;
    return {
      message,
      path: formatPath(full),
      ...(at ?? {}),
      ...(this.#doc.file ? { file: this.#doc.file } : {}),
      ...(this.#policy ? { policy: this.#policy } : {}),
    };
  }

  error(path: readonly PathPart[], message: string, key?: string): void {
    this.issues.push(this.#make(path, message, key));
  }

  warn(path: readonly PathPart[], message: string, key?: string, code?: string): void {
    this.warnings.push({ ...this.#make(path, message, key), ...(code ? { code } : {}) });
  }

  get failed(): boolean {
    return this.issues.length > 0;
  }
}
