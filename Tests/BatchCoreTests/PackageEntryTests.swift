import BatchCore
import Testing

@Suite("Package entries: names and links that stay in the work dir")
struct PackageEntryTests {
    @Test(
        "absolute names and .. components are refused",
        arguments: [
            ("run.sh", false), ("lib/a/b.txt", false), ("./run.sh", false), ("a..b/c", false), ("/etc/passwd", true),
            ("../x", true), ("a/../../x", true), ("a/..", true),
        ])
    func names(name: String, refused: Bool) {
        #expect((PackageEntry.refusal(name: name) != nil) == refused, "\(name)")
    }

    @Test(
        "a link stays inside when its target, from the link's directory, never climbs above the work dir",
        arguments: [
            ("a", "b", true), ("a/link", "../b", true), ("a/b/link", "../../c", true), ("a/link", "./x/../y", true),
            ("link", "../x", false), ("a/link", "../../x", false), ("link", "/etc", false),
            ("link", "x/../../y", false),
        ])
    func links(path: String, target: String, inside: Bool) {
        #expect(PackageEntry.linkStaysInside(path: path, target: target) == inside, "\(path) -> \(target)")
    }
}
