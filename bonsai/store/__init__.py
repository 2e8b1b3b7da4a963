"""The transcript store: every debate, turn, candidate and verdict in one SQLite file."""

from bonsai.store.records import CandidateRecord, DebateRecord, TurnRecord, VerdictRecord
from bonsai.store.transcripts import TranscriptStore

__all__ = ["CandidateRecord", "DebateRecord", "TranscriptStore", "TurnRecord", "VerdictRecord"]
