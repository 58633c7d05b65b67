/// How many instances a node runs at once when the operator does not say (`--slots`): from its CPUs, its memory and
/// the memory its instances ask for.
///
/// Short instances mostly wait (for their process to start, their files, the network), so a node keeps several per
/// core going: with one slot per core, trivial instances left a 2-core node idle on its own bookkeeping most of the
/// time (docs/benchmarks.md). Memory caps it: each slot gets at least ``minimumInstanceMemory``, or what the
/// environment gives each instance (`InstanceMemoryLimit`).
public enum NodeSizing {
    public static let slotsPerCPU = 8
    public static let minimumInstanceMemory: Int64 = 256 << 20
    public static let maximumSlots = 64

    /// The slots of a node of `cpus` CPUs and `memoryBytes` of memory whose instances may each use
    /// `instanceMemoryBytes` (nil: no limit asked for).
    public static func slots(cpus: Int, memoryBytes: Int64, instanceMemoryBytes: Int64? = nil) -> Int {
        let byCPU = max(1, cpus) * slotsPerCPU
        let perSlot = max(instanceMemoryBytes ?? minimumInstanceMemory, 16 << 20)
        let byMemory = Int(min(memoryBytes / perSlot, Int64(maximumSlots)))
        return max(1, min(byCPU, byMemory, maximumSlots))
    }
}
