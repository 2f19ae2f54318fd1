/**
 * The non-standard end-of-data sequences behind SMTP smuggling
 * (CVE-2023-51764, CVE-2023-51765, CVE-2023-51766): none may end DATA.
 *
 * @module
 */

/** Every sequence the unit and end-to-end tests try. */
export const SMUGGLING_SEQUENCES: readonly string[] = [
  "\n.\n",
  "\n.\r\n",
  "\r\n.\n",
  "\r.\r",
  "\r\n.\r",
  "\r\n\x00.\r\n",
  "\r.\r\n",
  ".\n",
  "\n..\n",
  "\r\n.\x00\r\n",
];
