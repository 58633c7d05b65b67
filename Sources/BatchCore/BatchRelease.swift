/// The release of this build: what every binary prints with `--version`.
public enum BatchRelease {
    /// Semantic version of the release. `batch-sandbox` (C) prints the same; a test holds them together.
    public static let version = "0.1.0"
}
