from slimmer.entry import main

main()
