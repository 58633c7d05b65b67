// Shared service runtime.
