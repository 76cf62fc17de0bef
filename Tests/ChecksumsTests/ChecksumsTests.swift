import XCTest
import Checksums
import POSIXFiles
import TestSupport

final class ChecksumsTests: XCTestCase {
    func testSHA256MatchesPublishedVectors() {
        XCTAssertEqual(SHA256Hasher.hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256Hasher.hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256Hasher.hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func testFileHashingAcrossBufferBoundariesEqualsOneShot() throws {
        let t = TempDir(); defer { t.cleanup() }
        // Larger than one read, not a multiple of it, so the last short read is exercised.
        var bytes = [UInt8](repeating: 0, count: FileHasher.maxReadSize + 12345)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        let p = t.write("big.bin", bytes)
        var seen = 0
        let d = try FileHasher.sha256(path: p) { seen += $0 }
        XCTAssertEqual(d.size, Int64(bytes.count))
        XCTAssertEqual(seen, bytes.count)
        XCTAssertEqual(d.sha256, SHA256Hasher.hash(bytes))
        let sys = try ProcessRunner.run("/usr/bin/sha256sum", [p])
        XCTAssertEqual(String(sys.stdout.prefix(64)), d.sha256)
    }

    func testWholeAndPartDigestsInOnePassEqualSeparateHashes() throws {
        let t = TempDir(); defer { t.cleanup() }
        var bytes = [UInt8](repeating: 0, count: 5 * (1 << 20) + 4321)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 131 &+ i >> 9) }
        let p = t.write("parts.bin", bytes)
        for partSize in [1 << 20, 3 << 20, 8 << 20] {
            let (whole, parts, crc) = try FileHasher.sha256WithParts(path: p, partSize: partSize)
            XCTAssertEqual(whole.sha256, SHA256Hasher.hash(bytes))
            XCTAssertEqual(crc, CRC32C.checksum(bytes))
            XCTAssertEqual(whole.size, Int64(bytes.count))
            let expected = stride(from: 0, to: bytes.count, by: partSize).map { start in
                Digester.digest(.sha256, Array(bytes[start..<min(start + partSize, bytes.count)]))
            }
            XCTAssertEqual(parts, expected, "part size \(partSize)")
        }
        XCTAssertThrowsError(try FileHasher.sha256WithParts(path: t.file("missing.bin"), partSize: 1 << 20)) { e in
            XCTAssertTrue("\(e)".contains("missing.bin"), "\(e)")
        }
    }

    func testMissingFileErrorNamesThePathAndAHint() {
        XCTAssertThrowsError(try FileHasher.sha256(path: "/nonexistent/x.tif")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("/nonexistent/x.tif"), s)
            XCTAssertTrue(s.contains("exists"), s)
        }
    }

    func testVerifiedCopyIsReadOnlyAndIdentical() throws {
        let t = TempDir(); defer { t.cleanup() }
        let src = t.write("a.bin", Array("hello microscope".utf8))
        let d = try FileHasher.copyVerified(from: src, to: t.file("b.bin"))
        XCTAssertEqual(d.sha256, SHA256Hasher.hash("hello microscope"))
        XCTAssertEqual(t.read("b.bin"), "hello microscope")
        XCTAssertEqual(try FileStatus.of(path: t.file("b.bin")).mode & 0o222, 0)
        // The destination must not exist: a copy never replaces a file.
        XCTAssertThrowsError(try FileHasher.copyVerified(from: src, to: t.file("b.bin")))
    }

    func testAtomicWriteLeavesNoTemporaryAndReplacesWhole() throws {
        let t = TempDir(); defer { t.cleanup() }
        try AtomicFile.write("one", to: t.file("f.txt"))
        try AtomicFile.write("two two", to: t.file("f.txt"))
        XCTAssertEqual(t.read("f.txt"), "two two")
        XCTAssertEqual(try listDirectory(t.path).map(\.name), ["f.txt"])
        // A temporary of a dead process on this host is removed; one of a live process (ours) is not.
        t.write(AtomicFile.temporaryPrefix + "\(AtomicFile.hostName)-999999999-x-f.txt", "partial")
        let mine = AtomicFile.temporaryPath(for: t.file("g.txt"))
        _ = FileManager.default.createFile(atPath: mine, contents: Data("writing".utf8))
        t.write(AtomicFile.temporaryPrefix + "otherhost-1-x-f.txt", "another node's")
        XCTAssertEqual(AtomicFile.removeStaleTemporaries(in: t.path), 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: mine))
        XCTAssertTrue(t.exists(AtomicFile.temporaryPrefix + "otherhost-1-x-f.txt"))
    }

    /// Reserving space works on a disk file system (fallocate) and on tmpfs (sparse, after a free-space
    /// check): the file has the size and reads as zeros; asking for more than the file system holds
    /// fails at once with ENOSPC instead of partway through a download.
    func testPreallocateOnDiskAndTmpfsAndTooLarge() throws {
        let disk = TempDir(); defer { disk.cleanup() }
        var dirs = [disk.path]
        let shm = "/dev/shm/emflow-prealloc-\(getpid())"
        if mkdir(shm, 0o700) == 0 { dirs.append(shm) }
        defer { _ = try? FileManager.default.removeItem(atPath: shm) }
        for dir in dirs {
            let path = dir + "/reserved.bin"
            do {
                let fd = try FileDescriptor(path: path, mode: .createExclusive(permissions: 0o600))
                try fd.preallocate(3 << 20)
                XCTAssertEqual(try fd.status().size, 3 << 20, dir)
            }
            let bytes = try readFile(path)
            XCTAssertEqual(bytes.count, 3 << 20, dir)
            XCTAssertTrue(bytes.allSatisfy { $0 == 0 }, dir)
            let fd = try FileDescriptor(path: dir + "/huge.bin", mode: .createExclusive(permissions: 0o600))
            var vfs = statvfs()
            XCTAssertEqual(statvfs(dir, &vfs), 0)
            let tooMuch = Int64(vfs.f_bavail) * Int64(vfs.f_frsize) + (1 << 30)
            XCTAssertThrowsError(try fd.preallocate(tooMuch), dir) { e in
                XCTAssertEqual((e as? POSIXFileError)?.errno, ENOSPC, "\(dir): \(e)")
            }
        }
    }

    func testPathNormalization() {
        XCTAssertEqual(Path.normalize("/a/./b//c/../d"), "/a/b/d")
        XCTAssertEqual(Path.normalize("/../a"), "/a")
        XCTAssertEqual(Path.relative("/r/a/b", to: "/r"), "a/b")
        XCTAssertNil(Path.relative("/ra/b", to: "/r"))
    }

    /// Subprocess (POSIXFiles) replaces Foundation's Process, whose waitUntilExit on the main thread
    /// (XCTest's) wakes only every 50 ms.
    func testSubprocessCapturesFeedsAndReapsAChildPromptly() throws {
        // Output and status, each stream on its own.
        let r = try Subprocess.run("/bin/sh", ["-c", "printf out; printf err >&2; exit 3"])
        XCTAssertEqual(String(decoding: r.stdout, as: UTF8.self), "out")
        XCTAssertEqual(String(decoding: r.stderr, as: UTF8.self), "err")
        XCTAssertEqual(r.status, 3)
        XCTAssertFalse(r.signaled || r.succeeded)
        // 4 MiB in and the same 4 MiB out at once: neither pipe may fill up and stop the other.
        let input = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
        let echoed = try Subprocess.run("/bin/cat", [], input: input)
        XCTAssertTrue(echoed.succeeded)
        XCTAssertEqual(echoed.stdout.count, input.count)
        XCTAssertTrue(echoed.stdout == input)
        // A child that exits without reading its input does not take this process down with SIGPIPE.
        XCTAssertEqual(try Subprocess.run("/bin/true", [], input: input).status, 0)
        // A signal ends it: reported as the signal.
        let killed = try Subprocess.run("/bin/sh", ["-c", "kill -TERM $$; sleep 5"])
        XCTAssertTrue(killed.signaled)
        XCTAssertEqual(killed.status, SIGTERM)
        // Environment and working directory as given.
        let env = try Subprocess.run("/bin/sh", ["-c", "echo \"$EMFLOW_TEST_VALUE\"; pwd"], environment: ["EMFLOW_TEST_VALUE": "a b", "PATH": "/usr/bin:/bin"], directory: "/usr")
        XCTAssertEqual(String(decoding: env.stdout, as: UTF8.self), "a b\n/usr\n")

        // The child starts clean: SIGPIPE at its default even where this process ignores it, its own
        // process group, and none of this process's descriptors.
        let previous = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, previous) }
        let inheritable = open("/dev/null", O_RDONLY)  // no O_CLOEXEC
        defer { close(inheritable) }
        XCTAssertGreaterThan(inheritable, 2)
        let state = try Subprocess.run("/bin/sh", ["-c", "grep SigIgn /proc/$$/status; cut -d' ' -f1,5 /proc/$$/stat; readlink /proc/$$/fd/\(inheritable) || echo closed"])
        let lines = String(decoding: state.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3, "\(lines)")
        let ignored = UInt64(lines[0].split(separator: "\t").last ?? "", radix: 16) ?? .max
        XCTAssertEqual(ignored & (1 << (UInt64(SIGPIPE) - 1)), 0, lines[0])
        let ids = lines[1].split(separator: " ")
        XCTAssertEqual(ids.count, 2)
        XCTAssertEqual(ids.first, ids.last, "pid and process group: \(lines[1])")
        XCTAssertNotEqual(String(ids[0]), String(getpgrp()))
        XCTAssertEqual(lines[2], "closed")

        // A child that runs 10 ms is back in well under Process's 50 ms step (median of 5 runs).
        let times = try (0..<5).map { _ -> Double in
            var t0 = timespec(), t1 = timespec()
            clock_gettime(CLOCK_MONOTONIC, &t0)
            XCTAssertTrue(try Subprocess.run("/bin/sleep", ["0.01"]).succeeded)
            clock_gettime(CLOCK_MONOTONIC, &t1)
            return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
        }.sorted()
        XCTAssertLessThan(times[2], 0.040, "\(times)")

        XCTAssertThrowsError(try Subprocess.run("/nonexistent/tool", [])) { e in
            XCTAssertEqual((e as? POSIXFileError)?.errno, ENOENT, "\(e)")
            XCTAssertTrue("\(e)".contains("/nonexistent/tool"), "\(e)")
        }
    }
}
