public enum _WIP {}
