/**
 * The error of a CNI attachment request the agent refuses or cannot verify, with the API code
 * and status it answers with (the plugin turns the code into a CNI error code, cni/types.ts).
 */

export type CniErrorCode =
  | "cni_unavailable"
  | "cni_netns_not_found"
  | "cni_unknown_container"
  | "cni_conflict"
  | "invalid_cni_args"
  | "cni_check_failed"
  | "cni_invalid_netns"
  | "cni_invalid_ifname"
  | "cni_ifname_taken";

export class CniAttachmentError extends Error {
  override name = "CniAttachmentError";
  constructor(readonly code: CniErrorCode, message: string, readonly status: number) {
    super(message);
  }
}
