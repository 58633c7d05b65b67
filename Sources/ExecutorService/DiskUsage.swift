import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What a directory tree takes on disk, for an instance's disk limit.
enum DiskUsage {
    /// Whether the files and directories under `path` take more than `limit` bytes on disk (allocated blocks; links
    /// are not followed, a tree on another file system is not entered). It stops counting as soon as they do. The
    /// walk holds one open directory per level, not a stack frame: an instance's deep tree costs descriptors, not
    /// the node's stack.
    static func exceeds(_ limit: Int64, under path: String) -> Bool {
        let root = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { return false }
        var rootInfo = stat()
        guard fstat(root, &rootInfo) == 0, let first = fdopendir(root) else {
            close(root)
            return false
        }
        var open = [first]
        defer { for directory in open { closedir(directory) } }
        var total = Int64(rootInfo.st_blocks) * 512
        while let directory = open.last {
            guard let entry = readdir(directory) else {
                closedir(directory)
                open.removeLast()
                continue
            }
            let descend: Int32? = withUnsafePointer(to: &entry.pointee.d_name) { raw in
                raw.withMemoryRebound(to: CChar.self, capacity: 256) { name -> Int32? in
                    if name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0)) { return nil }
                    var info = stat()
                    guard fstatat(dirfd(directory), name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
                    total += Int64(info.st_blocks) * 512
                    guard info.st_mode & S_IFMT == S_IFDIR, info.st_dev == rootInfo.st_dev else { return nil }
                    return openat(dirfd(directory), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                }
            }
            if total > limit { return true }
            if let descend, descend >= 0 {
                if let child = fdopendir(descend) { open.append(child) } else { close(descend) }
            }
        }
        return false
    }
}
