/** The Letterbox release, printed by `--version` and in the greeting logs. */
export const VERSION = "0.1.0";
